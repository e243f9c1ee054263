"""What a user would build instead of NanoGrid: a plain Celery task that runs each call's code in a
`docker run` of its own (no warm containers, no limits beyond Docker's, no job records). The
benchmark starts a worker of this app beside NanoGrid's stack, on the same Redis, and measures it in
the same run.

    celery -A plain_celery worker -Q bench-plain    (BENCH_REDIS_URL, BENCH_IMAGE set; cwd bench/)
"""

import os
import subprocess

from celery import Celery

QUEUE = "bench-plain"
TASK = "bench.docker_run"
# The function's code around the handler: the event on stdin, the result as JSON on stdout.
WRAPPER = "import json, sys\n{code}\nprint(json.dumps(handler(json.load(sys.stdin), None)))\n"

app = Celery("bench-plain", broker=os.environ.get("BENCH_REDIS_URL"), backend=os.environ.get("BENCH_REDIS_URL"))
app.conf.update(task_default_queue=QUEUE, worker_prefetch_multiplier=1, task_acks_late=True)


@app.task(name=TASK)
def docker_run(code: str, event_json: str) -> str:
    done = subprocess.run(["docker", "run", "--rm", "-i", "--network", "none", "--memory", "256m",
                           os.environ["BENCH_IMAGE"], "python3", "-c", WRAPPER.format(code=code)],
                          input=event_json, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout
