"""The generation queue: one worker thread, a bounded FIFO, batching of compatible jobs, cancellation.

One model is in memory and only the worker thread touches it, so generations never race. A request becomes a
``Job`` in a FIFO of at most ``max_depth`` waiting jobs; past that ``submit`` raises ``QueueFullError`` (the API
answers 503 with ``Retry-After``). When the worker takes a job whose ``batch_key`` is set, it also takes the
waiting jobs with the same key, up to ``max_batch`` images, and runs them as one batch.

A job is cancelled by its client going away or by ``interrupt``. A waiting job just leaves the queue; a running
one is stopped at the next sampling step: the runner's per-step callback raises ``GenerationCancelled`` (which
aborts the compiled loop) once every job of the running batch is cancelled. The worker catches everything a run
raises, so a failed or cancelled job never stops it.

Example:
    >>> queue = JobQueue(runner, max_depth=8)            # doctest: +SKIP
    >>> queue.start(); job = Job("txt2img", spec)         # doctest: +SKIP
    >>> queue.submit(job); outcome = job.future.result()  # doctest: +SKIP
"""

import collections
import concurrent.futures
import dataclasses
import math
import threading
import time
from typing import Any, Optional


class QueueFullError(Exception):
    """The queue holds ``max_depth`` waiting jobs; retry after ``retry_after`` seconds."""

    def __init__(self, depth, retry_after):
        super().__init__(f"the generation queue is full ({depth} waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class GenerationCancelled(Exception):
    """Raised from the per-step callback to abort a generation whose clients are all gone or interrupted."""


class ServerStopping(Exception):
    """The server shut down before the job ran."""


@dataclasses.dataclass(eq=False)
class Job:
    """One unit of work for the worker: ``kind`` names it, ``spec`` is what the runner needs."""

    kind: str
    spec: Any
    batch_key: Optional[tuple] = None
    num_images: int = 1
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    interrupted: bool = False
    submitted_at: float = dataclasses.field(default_factory=time.monotonic)


COMPILING_TEXT = "compiling (first run of this shape)"


def progress_text(state):
    """``textinfo`` of ``/sdapi/v1/progress`` for a ``Progress.snapshot`` state: None when idle."""
    if not state["job_count"]:
        return None
    if state.get("compiling"):
        return COMPILING_TEXT
    return f"Step {state['sampling_step']}/{state['sampling_steps']}"


class Progress:
    """What ``/sdapi/v1/progress`` reports: the running job's iteration and sampling step, whether the sampling
    loop is compiling (the first run of a shape), and an ETA from the step times alone (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._reset()

    def _reset(self):
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.interrupted = False
        self.compiling = False
        self.time_start = None
        self.job_timestamp = "0"
        # step timing: steps and seconds of the iterations done, and where the current one started timing
        self._timed_steps, self._timed_seconds = 0, 0.0
        self._sampling_since, self._sampling_from = None, 0

    def begin(self, job, job_count, sampling_steps):
        with self._lock:
            self._reset()
            self.job, self.job_count, self.sampling_steps = job, job_count, sampling_steps
            self.time_start = self._sampling_since = time.monotonic()
            self.job_timestamp = time.strftime("%Y%m%d%H%M%S")

    def update(self, *, job_no=None, sampling_step=None, interrupted=None, phase=None):
        """Record a new iteration (``job_no``), a finished step, an interruption, or the sampling loop's
        ``phase``: ``"compiling"`` or ``"sampling"`` (its steps start: step times count from here)."""
        with self._lock:
            now = time.monotonic()
            if job_no is not None:
                self._fold_timing()
                self.job_no, self.sampling_step = job_no, 0
                self._sampling_since, self._sampling_from = now, 0
            if phase is not None:
                self.compiling = phase == "compiling"
                self._sampling_since, self._sampling_from = now, self.sampling_step
            if sampling_step is not None:
                self.sampling_step = sampling_step
                self.compiling = False
            if interrupted:
                self.interrupted = True

    def _fold_timing(self):
        if self._sampling_since is not None and self.sampling_step > self._sampling_from and not self.compiling:
            self._timed_steps += self.sampling_step - self._sampling_from
            self._timed_seconds += time.monotonic() - self._sampling_since
        self._sampling_since = None

    def seconds_per_step(self):
        """Mean time of the steps run so far in this job (compilation excluded); None before the first step."""
        steps, seconds = self._timed_steps, self._timed_seconds
        if self._sampling_since is not None and self.sampling_step > self._sampling_from and not self.compiling:
            steps += self.sampling_step - self._sampling_from
            seconds += time.monotonic() - self._sampling_since
        return seconds / steps if steps else None

    def end(self):
        with self._lock:
            self._reset()

    def snapshot(self):
        """``(progress in [0, 1], eta seconds, A1111 state dict + "compiling")``.

        Progress is computed as A1111 does; the ETA is the steps left times the mean step time so far, so
        compilation does not count (0 until the first step is done).
        """
        with self._lock:
            state = {"skipped": False, "interrupted": self.interrupted, "stopping_generation": False,
                     "job": self.job, "job_count": self.job_count, "job_timestamp": self.job_timestamp,
                     "job_no": self.job_no, "sampling_step": self.sampling_step,
                     "sampling_steps": self.sampling_steps, "compiling": self.compiling}
            if self.job_count == 0 or self.time_start is None:
                return 0.0, 0.0, state
            # A1111 starts at 0.01 so the value is never 0 while a job runs
            progress = 0.01 + self.job_no / self.job_count
            if self.sampling_steps > 0:
                progress += self.sampling_step / self.sampling_steps / self.job_count
            seconds_per_step = self.seconds_per_step()
            steps_left = (self.job_count - self.job_no) * self.sampling_steps - self.sampling_step
            eta = 0.0 if seconds_per_step is None else max(0.0, steps_left * seconds_per_step)
            return min(progress, 1.0), eta, state


class RunContext:
    """Handed to the runner with a batch of jobs: progress reporting and the cancellation check."""

    def __init__(self, jobs, progress):
        self.jobs = jobs
        self.progress = progress

    def all_cancelled(self):
        return all(job.cancelled.is_set() for job in self.jobs)

    def check_cancelled(self):
        if self.all_cancelled():
            raise GenerationCancelled("every client of this generation is gone or it was interrupted")

    @property
    def step(self):
        """The pipeline's ``progress`` callback: records each step and aborts when nobody waits any more; its
        ``phase`` method records whether the sampling loop compiles."""
        return _StepCallback(self)


class _StepCallback:
    __slots__ = ("context",)

    def __init__(self, context):
        self.context = context

    def __call__(self, step_done):
        self.context.progress.update(sampling_step=int(step_done))
        self.context.check_cancelled()

    def phase(self, name):
        self.context.progress.update(phase=name)
        self.context.check_cancelled()


class JobQueue:
    """A bounded FIFO of jobs and the worker thread that runs them with ``runner(jobs, context)``.

    ``runner`` returns one outcome per job (in order) or raises; a raised exception becomes every job's result.
    ``on_finish(job, seconds, outcome_or_exception)`` is called for each finished job (metrics).
    """

    def __init__(self, runner, *, max_depth=16, max_batch=4, on_finish=None):
        if max_depth < 1 or max_batch < 1:
            raise ValueError(f"max_depth and max_batch must be >= 1, got {max_depth} and {max_batch}")
        self.runner = runner
        self.max_depth = max_depth
        self.max_batch = max_batch
        self.on_finish = on_finish
        self.progress = Progress()
        self._waiting = collections.deque()
        self._running = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread = None
        self._recent_seconds = collections.deque(maxlen=20)  # for Retry-After

    # -- client side -----------------------------------------------------------------------------------------
    @property
    def depth(self):
        """Jobs waiting (not counting the running batch)."""
        return len(self._waiting)

    @property
    def running(self):
        return len(self._running)

    def retry_after(self):
        """Seconds until a slot is likely free: the mean recent job time times the jobs ahead, at least 1."""
        mean = sum(self._recent_seconds) / len(self._recent_seconds) if self._recent_seconds else 1.0
        return int(min(600, max(1, math.ceil(mean * max(1, self.depth) / self.max_batch))))

    def submit(self, job):
        """Queue ``job``; QueueFullError when ``max_depth`` jobs already wait, ServerStopping after ``stop``."""
        with self._lock:
            if self._stopping:
                raise ServerStopping("the server is shutting down")
            if len(self._waiting) >= self.max_depth:
                raise QueueFullError(len(self._waiting), self.retry_after())
            self._waiting.append(job)
            self._wake.notify()
        return job

    def cancel(self, job):
        """Cancel ``job``: a waiting job leaves the queue at once (returns True), a running one stops at its next
        step once every job of its batch is cancelled (returns False)."""
        job.cancelled.set()
        with self._lock:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
        _resolve(job, exception=GenerationCancelled("cancelled before it started"))
        return True

    def interrupt(self):
        """Stop the running batch at its next step (A1111's ``/interrupt``); waiting jobs stay queued."""
        with self._lock:
            running = list(self._running)
        for job in running:
            job.interrupted = True
            job.cancelled.set()
        if running:
            self.progress.update(interrupted=True)
        return len(running)

    # -- worker side -----------------------------------------------------------------------------------------
    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="sd-keras-generation", daemon=True)
            self._thread.start()

    def stop(self, timeout=30.0):
        """Refuse new jobs, fail the waiting ones, stop the running batch and join the worker."""
        with self._lock:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._wake.notify_all()
        for job in waiting:
            _resolve(job, exception=ServerStopping("the server shut down before this job ran"))
        self.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self):
        with self._lock:
            while not self._waiting and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return []
            head = self._waiting.popleft()
            batch, images = [head], head.num_images
            if head.batch_key is not None:
                for job in list(self._waiting):
                    if job.batch_key == head.batch_key and images + job.num_images <= self.max_batch:
                        self._waiting.remove(job)
                        batch.append(job)
                        images += job.num_images
            self._running = batch
            return batch

    def _work(self):
        while True:
            batch = self._next_batch()
            if not batch:
                return
            started = time.monotonic()
            try:
                outcomes = self.runner(batch, RunContext(batch, self.progress))
                results = [(job, outcome, None) for job, outcome in zip(batch, outcomes)]
            except BaseException as error:  # noqa: BLE001 - one failed run must not end the worker
                results = [(job, None, error) for job in batch]
            finally:
                self.progress.end()
                with self._lock:
                    self._running = []
            seconds = time.monotonic() - started
            self._recent_seconds.append(seconds)
            for job, outcome, error in results:
                if self.on_finish is not None:
                    try:
                        self.on_finish(job, seconds, error if error is not None else outcome)
                    except Exception:  # noqa: BLE001 - metrics must never fail a job
                        pass
                _resolve(job, outcome, error)


def _resolve(job, result=None, exception=None):
    if job.future.done():
        return
    if exception is not None:
        job.future.set_exception(exception)
    else:
        job.future.set_result(result)
