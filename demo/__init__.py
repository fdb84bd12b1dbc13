"""The end-to-end demo and the benchmark driver: the one place where every role is wired together.

The roles never import each other; this package composes them the way an operator would run
them, in one process, against an embedded redis-server it starts and stops itself.
"""
