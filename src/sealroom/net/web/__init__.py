"""The web door (SPEC section 5): HTTPS on ``web.listen`` with the web client at ``/`` and
the protocol over a WebSocket at ``/ws``, driven by the same reactor as the TLS port.

- :mod:`.site` — the HTTP answers and the upgrade's checks (no I/O).
- :mod:`.framing` — text messages to lines (no I/O).
- :mod:`.door` — what one listener's connections share: the site, the port, the numbers
  status shows, and the frames of lines just broadcast.
- :mod:`.connection` — :class:`~.connection.WebConnection`, a ``Connection`` that speaks
  HTTP (h11), then WebSocket (wsproto), to the same ``Session`` as the TLS port.
- :mod:`.listener` — :class:`~.listener.WebServer`, the listener that makes them.
- ``static/`` — the web client: one page, one script, one style sheet, an icon.
"""

from sealroom.net.web.listener import WebServer
from sealroom.net.web.site import Site

__all__ = ["Site", "WebServer"]
