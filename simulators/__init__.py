"""Simulated field devices, brokers' clients and servers: for tests, the demo and the benchmark only.

Nothing the daemon runs imports this package (an import contract in the test command checks it).
"""
