"""Device back ends that the installed TVM wheel lacks (code generators and their packaging)."""
