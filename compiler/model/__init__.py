"""compiler/model"""
