"""The CLI's HTTP client of `lg serve`: settings (which server, which token) and JSON calls to its API.

It sits below lg.runner (a runner records its run on a server through it) and above lg.runs (whose records it
reads back), so lg.server's own code never has to be imported by a client.
"""
