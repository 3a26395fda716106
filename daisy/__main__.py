"""The ``daisy`` command (``python -m daisy``, and the ``daisy`` script): ``daisy run`` goes
through the warm DAISY server when one is up (:mod:`daisy.server`), every command otherwise
straight to :func:`daisy.cli.main`."""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"] and "-h" not in argv and "--help" not in argv:
        from . import server

        if server.enabled():
            code = server.run_through_server(argv)
            if code is not None:
                return code
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
