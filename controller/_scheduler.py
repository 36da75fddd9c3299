"""The APScheduler shell: it wakes the controller on the wall clock at the times the
controller plans, and nothing else. Which job is due when is the controller's business
(`Controller.due()`); a test or benchmark skips this shell and calls `run_until()` on a
simulated clock, which APScheduler cannot run on."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from plaudit.faces import SimulatedClock

if TYPE_CHECKING:
    from plaudit.controller._controller import Controller


class JobScheduler:
    def __init__(self, controller: Controller) -> None:
        if isinstance(controller.clock, SimulatedClock):
            raise TypeError(
                "APScheduler runs on the wall clock; drive a SimulatedClock with run_until()"
            )
        self.controller = controller
        # Jobs with a timer set or fired and not yet finished. A fired timer leaves APScheduler's
        # job store before its coroutine starts; without this, a sync() in that window would set
        # a second timer for the same job, which APScheduler then skips with a warning.
        self._armed: set[str] = set()
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        # A job's next timer is set when APScheduler has counted its run as finished, not when
        # our coroutine returns: APScheduler releases the job's one running instance in the
        # task's done callback, after the coroutine. A timer set inside the coroutine for a job
        # due at once (an offline fit asked for while one ran) fired before that release, was
        # skipped with "maximum number of running instances reached", and the job stayed armed
        # with no timer: it never ran again.
        self._scheduler.add_listener(self._on_finished, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)

    def start(self) -> None:
        self.sync()
        self._scheduler.start()

    def sync(self) -> None:
        """Make the timers match the controller's plan: one timer per due job, none for a
        job that runs now (its next time is planned when it ends) or is not due."""
        due = self.controller.due()
        for job in self._scheduler.get_jobs():
            if job.id not in due:
                job.remove()
                self._armed.discard(job.id)
        for name, at in due.items():
            job = self._scheduler.get_job(name)
            if job is None and name in self._armed:
                continue  # fired: it runs now or is about to, and re-plans when it ends
            if self.controller.is_running(name):
                continue
            when = datetime.fromtimestamp(at).astimezone()
            if job is not None and job.next_run_time == when:
                continue
            self._scheduler.add_job(
                self._run,
                DateTrigger(run_date=when),
                args=[name],
                id=name,
                replace_existing=True,
                misfire_grace_time=None,  # a late wake-up still runs the job
            )
            self._armed.add(name)

    async def _run(self, name: str) -> None:
        await self.controller.run_job(name)  # its next timer: _on_finished

    def _on_finished(self, event: JobEvent) -> None:
        """APScheduler has released the job's running instance: plan its next run."""
        self._armed.discard(str(event.job_id))
        if self._scheduler.running:
            self.sync()

    def _on_skipped(self, event: JobEvent) -> None:
        # Should not happen (see __init__); if it does, the job must not stay armed without a
        # timer: its running instance's _on_finished sets the next one.
        self._armed.discard(str(event.job_id))

    def pause(self) -> None:
        if self._scheduler.running:
            # Pause, not shut down: shutting the executor down would cancel running jobs.
            self._scheduler.pause()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def _on_missed(self, event: JobEvent) -> None:
        job = str(event.job_id).split(":")[0]
        self.controller.ctx.metrics.scheduler_misfires.labels(job).inc()
