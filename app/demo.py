"""``make run``: the example service under gunicorn, with an offline upstream if none is set.

With ``UPSTREAM_URL`` unset, it starts the demo HTTPS upstream (:mod:`app.upstream`) on a
free loopback port with a CA generated into ``run/certs``, and trusts that CA through
``POOLCLIENT_CA_BUNDLE``. Then it runs gunicorn with ``gunicorn.conf.py``; Ctrl-C, or a
SIGINT or SIGTERM sent to this process alone, stops both. gunicorn's own processes run with
SIGINT blocked (see :func:`main`): signal this one.

``python -m app.demo app.flask_example:app`` (``make run APP=...``) runs another WSGI app
the same way: the Flask or Django example (``app.django_example:application``). An app
whose module is named for ASGI, such as the FastAPI example ``app.asgi_example:app``, runs
under gunicorn's ASGI worker (``-k asgi``) unless ``GUNICORN_WORKER_CLASS`` names another.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_demo_upstream(certs: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.upstream", "--certs", certs],
        cwd=HERE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("https://"):
        proc.kill()
        raise SystemExit("demo upstream failed to start")
    return proc, url


def is_asgi(target: str) -> bool:
    """Whether ``module:name`` names an ASGI app, by its module's name (``app.asgi_example``):
    importing it here to look would need its settings in this process too."""
    module = target.split(":", 1)[0]
    return "asgi" in module.rsplit(".", 1)[-1].split("_")


def main() -> None:
    env = dict(os.environ)
    upstream = None
    if not env.get("UPSTREAM_URL"):
        certs = os.path.join(HERE, "run", "certs")
        upstream, url = start_demo_upstream(certs)
        env["UPSTREAM_URL"] = url
        env["POOLCLIENT_CA_BUNDLE"] = os.path.join(certs, "ca.pem")
        print(f"demo upstream: {url} (CA {env['POOLCLIENT_CA_BUNDLE']})", flush=True)
    bind = env.get("BIND", f"127.0.0.1:{env.get('PORT', '8000')}")
    target = sys.argv[1:2]  # an app other than the relay, if given
    path = "/items/7" if target and not is_asgi(target[0]) else "/upstream/hello?x=1"
    if target and is_asgi(target[0]) and not env.get("GUNICORN_WORKER_CLASS"):
        target = ["-k", "asgi", *target]
    print(f"try: curl http://{bind}{path}  and  curl http://{bind}/health", flush=True)
    # gunicorn starts with SIGINT blocked (the mask is inherited through exec and fork): a
    # terminal's Ctrl-C reaches this process only, which stops gunicorn with one SIGQUIT,
    # gunicorn's quick stop as on SIGINT. Were a gthread worker to get the terminal's SIGINT
    # too, its master's SIGQUIT would follow within milliseconds and could interrupt the
    # worker's SIGINT handler while that holds its thread pool's lock; the second handler
    # then waits for that lock forever, and the master for the worker: graceful_timeout.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *target], cwd=HERE,
            env=env,
        )
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        raise
    # SIGTERM (systemd, timeout, kill) stops gunicorn gracefully, then the demo upstream.
    signal.signal(signal.SIGTERM, lambda *_: gunicorn.terminate())
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a Ctrl-C since is raised here
        code = gunicorn.wait()
    except KeyboardInterrupt:
        gunicorn.send_signal(signal.SIGQUIT)
        code = gunicorn.wait()
    finally:
        if upstream is not None:
            upstream.terminate()
            upstream.wait()
    sys.exit(code)


if __name__ == "__main__":
    main()
