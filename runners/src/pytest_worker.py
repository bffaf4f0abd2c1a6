"""Tessera's long-lived pytest worker: a pytest plugin that collects the suite once, then runs
batch after batch of node ids as they are asked for, as pytest-xdist's workers do.

`tessera_runners::PytestRunner` writes this file next to a worker's scratch files and starts
pytest with `-p tessera_pytest_worker`. The agent that started the worker asks for a batch by
writing one JSON line to the FIFO named by TESSERA_WORKER_REQUESTS:

    {"ids": ["tests/test_a.py::test_one", ...], "junit": "/abs/path/junit.xml"}

The worker runs those tests in that order and writes their JUnit report to `junit` with
pytest's own junitxml plugin (configured from the same options as a `--junitxml` run), so the
report reads exactly as a one-process-per-batch run's does; then it answers with one JSON line,
{"ran": N}, on the FIFO named by TESSERA_WORKER_REPLIES. An id whose file failed to import is
reported with that collection error, as pytest reports it when asked to run the file. When the
requests FIFO reaches its end (the agent closed it or died), the session ends as usual.

Fixtures: the last test of a batch is run with no next item, so everything it set up is torn
down before the worker answers (as when the batch was its own process); module state and
imports stay, as in one direct pytest run.
"""

import json
import os

import pytest

REQUESTS = "TESSERA_WORKER_REQUESTS"
REPLIES = "TESSERA_WORKER_REPLIES"


class TesseraWorker:
    """Replaces pytest's run loop with one that serves batches from the requests FIFO."""

    def __init__(self):
        self.collect_errors = {}

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors[report.nodeid] = report

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        from _pytest import junitxml

        items = {}
        for item in session.items:
            items.setdefault(item.nodeid, item)
        with open(os.environ[REQUESTS], encoding="utf-8") as requests, open(
            os.environ[REPLIES], "w", encoding="utf-8"
        ) as replies:
            while True:
                line = requests.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                request = json.loads(line)
                ran = self.run_batch(session, junitxml, items, request)
                replies.write(json.dumps({"ran": ran}) + "\n")
                replies.flush()
        return True

    def run_batch(self, session, junitxml, items, request):
        config = session.config
        config.option.xmlpath = request["junit"]
        junitxml.pytest_configure(config)
        xml = config.stash.get(junitxml.xml_key, None)
        try:
            if xml is not None:
                xml.pytest_sessionstart()
            batch = []
            for nodeid in request["ids"]:
                item = items.get(nodeid)
                if item is not None:
                    batch.append(item)
                elif nodeid in self.collect_errors and xml is not None:
                    xml.pytest_collectreport(self.collect_errors[nodeid])
            for i, item in enumerate(batch):
                nextitem = batch[i + 1] if i + 1 < len(batch) else None
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            # `-x`-style stops are the job's business, not the worker's.
            session.shouldstop = False
            session.shouldfail = False
            return len(batch)
        finally:
            if xml is not None:
                xml.pytest_sessionfinish()
            junitxml.pytest_unconfigure(config)
            config.option.xmlpath = None


def pytest_configure(config):
    if os.environ.get(REQUESTS) and os.environ.get(REPLIES):
        config.pluginmanager.register(TesseraWorker(), "tessera-worker")
