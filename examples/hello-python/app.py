"""hello-python: an Updraft HTTP function in Python.

componentize-py turns this module into a wasi:http/proxy component; the
bindings (`wit_world`) are generated from wit/ at build time. Every request
gets `200 text/plain` and a greeting.
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

GREETING = b"Hello from Updraft (Python)!\n"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        # The stream must be dropped (end of `with`) before the body is finished.
        with body.write() as stream:
            stream.blocking_write_and_flush(GREETING)
        OutgoingBody.finish(body, None)
