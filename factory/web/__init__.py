"""The run browser: `factory serve`, a local web app over `runs/index.duckdb`.

Starlette + Jinja2, served by uvicorn (the optional `web` extra). Nothing in the
engine imports this package; `factory serve` is its only door. The app only
reads: every request opens the index read-only for as long as it needs, so a
build that refreshes the index is never blocked for longer than one query.
"""

from __future__ import annotations

import sys
from pathlib import Path

INSTALL_HINT = 'the run browser needs the web extra: pip install -e ".[web]"'


def serve(root: Path, host: str = "127.0.0.1", port: int = 8765) -> int:
    """Start the server in the foreground; returns an exit status."""
    try:
        import uvicorn

        from factory.web.app import create_app
    except ImportError as e:
        print(f"factory serve: {INSTALL_HINT} ({e.name} is missing)", file=sys.stderr)
        return 1
    app = create_app(Path(root))
    where = "only this machine can reach it" if host in ("127.0.0.1", "localhost", "::1") else f"bound to {host}"
    print(f"factory serve: http://{host}:{port}/ ({where}); reading {Path(root) / 'runs' / 'index.duckdb'}",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
