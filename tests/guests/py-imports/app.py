"""py-imports: a Python wasi:http function whose libraries (json, email,
decimal, statistics, difflib, urllib) are imported at module level, so
componentize-py's build-time snapshot holds them loaded. See work.py."""

import work
from wit_world import exports
from wit_world.imports.types import IncomingRequest, ResponseOutparam


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        work.handle(request, response_out)
