"""The app says which database and data folder it is on, and groups engines by host (with the
SLURM job of engines submitted to a cluster)."""

from __future__ import annotations

import os

from textual.widgets import DataTable, Static

from store import queue as q
from store.db import Store
from tests.tui import SIZE, wait_for
from tui.app import MtpApp

DB_BACKENDS = ("sqlite", "postgresql")


async def test_home_names_the_database_without_its_password_and_the_folder(home, db_backend):
    url = os.environ.get("MTP_DB_URL")
    if url:  # the test server trusts local users, so a password in the URL is accepted and ignored
        url = url.replace("postgresql+psycopg://mtp@", "postgresql+psycopg://mtp:s3cret-pw@")
    store = Store(home, url=url)
    for host, dev in (("gpu-b", "cuda:0"), ("gpu-a", "cuda:0"), ("gpu-b", "cuda:1")):
        job = "77" if dev == "cuda:1" else None  # an engine submitted as a SLURM job
        q.register_worker(store, dev, host=host, pid=7, slurm_job_id=job, slurm_node=job and host)
    app = MtpApp(store)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(
                pilot,
                lambda: app.screen.query_one("#workers", DataTable).row_count == 3,
                what="the workers table",
            )
            label = str(app.screen.query_one("#where-label", Static).render())
            assert str(home.root) in label and str(home.root) in app.sub_title
            if db_backend == "postgresql":
                assert (
                    "s3cret-pw" not in label + app.sub_title
                    and "***" in label
                    and "postgresql" in label
                )
            else:
                assert "SQLite" in label
            table = app.screen.query_one("#workers", DataTable)
            hosts = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
            assert hosts == ["gpu-a", "gpu-b", ""]  # grouped: each host named once
            jobs = [str(table.get_row_at(i)[7]) for i in range(table.row_count)]
            assert jobs == ["-", "-", "77@gpu-b"]
    finally:
        store.close()
