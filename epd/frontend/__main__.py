"""``python -m epd.frontend <epd_config.json> <store_host> <store_port>``: started by the job's launcher
(epd's own, or rank 0 under torchrun), with the job secret in its environment."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from epd.config import load_run_config
from epd.launch import exit_codes
from epd.launch.logs import setup_logging
from epd.launch.rank import resolve_bind_host
from epd.launch.secret import SECRET_ENV, secret_from_env
from epd.launch.store import connect_store

log = logging.getLogger("epd.frontend")


def main(argv: list[str]) -> int:
    config_file, host, port = argv
    cfg = load_run_config(config_file)
    setup_logging("frontend", cfg.run_dir, cfg.logger.quiet)
    secret = secret_from_env()
    if secret is None:
        raise RuntimeError(f"the frontend needs the job secret in {SECRET_ENV}")
    store = connect_store(host, int(port))
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 0))
    bind_host = resolve_bind_host(cfg, 0 < local < world, store)
    launcher = os.environ.get("EPD_LAUNCHER_PID")
    from epd.frontend.frontend import Frontend
    from epd.frontend.job import run_job

    try:
        frontend = Frontend(cfg, store, secret, bind_host)
    except Exception as exc:  # nothing was sent yet: record every request as aborted, then fail
        log.error("the frontend could not start: %s\n%s", exc, traceback.format_exc())
        from epd.frontend.job import write_aborted_run

        write_aborted_run(cfg, f"the frontend could not start: {type(exc).__name__}: {exc}")
        return exit_codes.JOB_FAILED
    if cfg.server.enabled:  # python -m epd.serve: HTTP clients instead of the workload
        from epd.server.loop import run_server

        return run_server(frontend, int(launcher) if launcher else None)
    return run_job(frontend, int(launcher) if launcher else None)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(exit_codes.INTERRUPTED)
