"""The sweep builder's time estimate: measured seconds per step per pixel of the same model's
finished runs, scaled to the sweep's steps and size; unknown rather than borrowed from another
model."""

from __future__ import annotations

from sqlmodel import select

from store.queries import RunCost, estimate_seconds
from tests.tui import SIZE, seed_experiment, wait_for
from tui.app import MtpApp


def test_estimate_scales_by_steps_and_pixels_and_is_unknown_without_samples():
    from store.queries import PIXEL_EXPONENT

    costs = [RunCost("m", "cpu", 0.07, 10, 64 * 64) for _ in range(5)]
    est = estimate_seconds(costs, "m", 100, 50, 128, 128, workers=1)
    expected = 100 * 0.07 * 5 * 4**PIXEL_EXPONENT
    assert abs(est.seconds - expected) < 1e-6 and est.samples == 5
    assert estimate_seconds(costs, "m", 100, 50, 128, 128, workers=2).seconds == est.seconds / 2
    assert estimate_seconds(costs, "other", 100, 10, 64, 64) is None
    assert estimate_seconds(costs[:2], "m", 100, 10, 64, 64) is None  # too few to say
    # Runs at the very size and step count: their own median, nothing scaled.
    assert abs(estimate_seconds(costs, "m", 10, 10, 64, 64).seconds - 0.7) < 1e-9
    # Two sizes measured: their own exponent (here cost per step grows with pixels^1).
    two = costs + [RunCost("m", "cpu", 0.28, 10, 128 * 128) for _ in range(5)]
    est = estimate_seconds(two, "m", 1, 10, 256, 256)
    assert abs(est.seconds - 0.07 * 16) < 1e-6
    # The device that ran the model last is the one estimated (runs batch where they ran).
    mixed = [RunCost("m", "cuda:0", 0.01, 10, 4096)] * 3 + costs
    assert estimate_seconds(mixed, "m", 1, 10, 64, 64).device == "cuda:0"


def test_estimate_is_within_2x_of_a_measured_demo_sweep():
    # Measured on this machine with the tiny demo model on CPU (mtp-engine --once): 20 runs at
    # 10 steps / 64 px took 1.37 s of run time, then 20 runs at 50 steps / 128 px 11.91 s.
    small = [RunCost("tiny", "cpu", 1.37 / 20, 10, 64 * 64) for _ in range(20)]
    est = estimate_seconds(small, "tiny", 20, 50, 128, 128)
    assert 11.91 / 2 <= est.seconds <= 11.91 * 2, est


async def test_builder_estimate_follows_steps_and_size(store):
    from store.models import Run

    exp = seed_experiment(store)  # model <home>/models/fake-sd
    with store.write() as s:
        for r in s.exec(select(Run).where(Run.experiment_id == exp.id)):
            r.status, r.duration_s, r.worker_id = "done", 0.07, "h:1:cpu"
            r.num_steps, r.width, r.height = 10, 64, 64
            s.add(r)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "SweepScreen" and app.screen._ready
        )
        sweep = app.screen
        summary = sweep.query_one("#sweep-summary")
        sweep._fields["model"].value = str(store.home.models / "fake-sd")
        sweep._fields["num_steps"].value = "50"
        sweep._fields["width"].value = sweep._fields["height"].value = "128"
        await wait_for(pilot, lambda: "scaled by" in str(summary.content), what="estimate")
        n = sweep.last_count
        from store.queries import PIXEL_EXPONENT

        expected = n * 0.07 * 5 * 4**PIXEL_EXPONENT
        from tui.screens._common import duration

        assert f"estimated {duration(expected)}" in str(summary.content)
        sweep._fields["model"].value = "org/another-model"
        await wait_for(pilot, lambda: "unknown" in str(summary.content), what="unknown")


async def test_a_notification_leaves_the_estimate_line_visible_at_80x24(store):
    app = MtpApp(store)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "SweepScreen" and app.screen._ready
        )
        summary = app.screen.query_one("#sweep-summary")
        await wait_for(pilot, lambda: "estimated" in str(summary.content), what="estimate line")
        app.notify("queued 40 runs of 'a rather long experiment name for a toast'", timeout=30)
        await wait_for(pilot, lambda: list(app.screen.query("Toast")), what="toast")
        await pilot.pause()
        for toast in app.screen.query("Toast"):
            assert not toast.region.overlaps(summary.region), (toast.region, summary.region)
