"""The top floor: the `llama-aot` command line, one thin function per subcommand.

It may import every room (compiler, schedules, targets, runtime_stubs, bench); none of them imports it.
"""
