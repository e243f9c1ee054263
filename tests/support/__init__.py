"""What every test layer shares: the servers the suite runs on, processes, stacks, apps, waiting.

- servers: free ports, HTTP readiness, redis-server, moto server and gcp-storage-emulator;
- processes: a command in its own session with its output in a file, and the group that starts them;
- stack: NanoGrid's own processes (`nanogrid dev`, or `nanogrid api` + `nanogrid worker`), driven
  over HTTP through nanogrid.client.Client;
- app: the API under Flask's test client on embedded storage and a real Redis, and a broker
  that records the task messages instead of sending them;
- docker: the containers of a job;
- engine_proxy: a relay in front of dockerd's socket that a test can cut and restore (an engine
  outage that leaves the machine's dockerd alone);
- runtimes: the OCI runtimes the Docker sandbox's tests run under (pytest.mark.runtimes);
- functions: sources the tests deploy, and gated ones that run until the test lets them finish;
- fake_ollama: a server that follows Ollama's published API; receiver: a callback receiver;
- metrics: a Prometheus page read as the tests check it;
- browser: Debian's Chromium driven by Playwright, for the web console;
- waiting: `eventually`, for waiting on evidence instead of sleeping;
- fixtures: the pytest fixtures tests/conftest.py offers to every test;
- needs: the markers saying which servers and processes a test uses, derived from its fixtures.
"""
