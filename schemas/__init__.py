"""Table DDL and the named-query catalogue, installed as the package `flight_server.schemas`.

The files here are package data: the server reads them through `importlib.resources`
(`flight_server.settings.packaged_schemas`), never from the working directory.
"""
