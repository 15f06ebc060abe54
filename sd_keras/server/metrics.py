"""The server's Prometheus metrics, kept in a ``prometheus_client.CollectorRegistry`` of their own per app.

Each app has its own registry (never the process-wide default one), so several apps in one process (tests,
notebooks) count separately. Counters and histograms take their labels as keyword arguments
(``requests.inc(endpoint="/health", method="GET", status="200")``); queue and compiled-program values are read
when ``/metrics`` is scraped.

Example:
    >>> metrics = ServerMetrics(queue=None)
    >>> metrics.images.inc(2)
    >>> "sd_keras_images_generated_total 2.0" in metrics.render()
    True
"""

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# the text format ``generate_latest`` writes (prometheus-client >= 0.22 also names a 1.0.0 type for it)
CONTENT_TYPE = getattr(prometheus_client, "CONTENT_TYPE_PLAIN_0_0_4", prometheus_client.CONTENT_TYPE_LATEST)
DEFAULT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Labelled:
    """A prometheus-client metric whose labels are given as keyword arguments of ``inc`` / ``observe``."""

    def __init__(self, metric, label_names):
        self._metric = metric
        self._label_names = tuple(label_names)

    def _child(self, labels):
        if set(labels) != set(self._label_names):
            raise ValueError(f"{self._metric._name} takes labels {self._label_names}, got {tuple(labels)}")
        return self._metric.labels(**{name: str(value) for name, value in labels.items()}) if labels else self._metric


class Counter(_Labelled):
    def __init__(self, registry, name, help_text, label_names=()):
        super().__init__(prometheus_client.Counter(name, help_text, label_names, registry=registry), label_names)

    def inc(self, amount=1.0, **labels):
        self._child(labels).inc(amount)


class Histogram(_Labelled):
    def __init__(self, registry, name, help_text, label_names=(), buckets=DEFAULT_BUCKETS):
        super().__init__(prometheus_client.Histogram(name, help_text, label_names, registry=registry,
                                                     buckets=buckets), label_names)

    def observe(self, value, **labels):
        self._child(labels).observe(value)


class _ReadAtScrape:
    """A collector of gauges and counters whose values are read by functions when scraped."""

    def __init__(self):
        self._items = []  # (family class, name, help, read)

    def add(self, family, name, help_text, read):
        self._items.append((family, name, help_text, read))

    def describe(self):
        return [family(name, help_text) for family, name, help_text, _ in self._items]

    def collect(self):
        for family, name, help_text, read in self._items:
            value = read()
            yield family(name, help_text, value=float(value if value is not None else 0))


class ServerMetrics:
    """The metrics of ``sd-keras serve``.

    ``queue``: the ``JobQueue`` (depth, capacity, running jobs); ``programs``: a callable returning a dict with
    ``held``, ``limit``, ``compilations`` and ``evictions`` of the compiled programs (``ModelRegistry.programs``).
    """

    def __init__(self, queue, programs=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(self.registry, "sd_keras_http_requests_total",
                                "HTTP requests by endpoint, method and status.", ("endpoint", "method", "status"))
        self.errors = Counter(self.registry, "sd_keras_errors_total",
                              "Errors: failed generations or model loads, and 5xx responses.", ("type",))
        self.client_disconnects = Counter(self.registry, "sd_keras_client_disconnects_total",
                                          "Requests whose client went away before the response (status 499).",
                                          ("endpoint",))
        self.refused = Counter(self.registry, "sd_keras_refused_requests_total",
                               "Requests refused before reaching an endpoint (wrong Host, cross-origin, read "
                               "timeout).", ("reason",))
        self.jobs = Counter(self.registry, "sd_keras_jobs_total", "Finished jobs by kind and outcome.",
                            ("kind", "outcome"))
        self.images = Counter(self.registry, "sd_keras_images_generated_total", "Images generated.")
        self.batched_jobs = Counter(self.registry, "sd_keras_batched_jobs_total",
                                    "Jobs that ran in one batch together with other compatible jobs.")
        self.generation_seconds = Histogram(
            self.registry, "sd_keras_generation_seconds",
            "Wall time of a job on the worker (a batch counts once per job).", ("kind",))
        scraped = _ReadAtScrape()
        if queue is not None:
            scraped.add(GaugeMetricFamily, "sd_keras_queue_depth", "Jobs waiting in the queue.", lambda: queue.depth)
            scraped.add(GaugeMetricFamily, "sd_keras_queue_capacity", "Most jobs that may wait.",
                        lambda: queue.max_depth)
            scraped.add(GaugeMetricFamily, "sd_keras_jobs_running", "Jobs in the running batch.",
                        lambda: queue.running)
        if programs is not None:
            scraped.add(GaugeMetricFamily, "sd_keras_compiled_programs",
                        "Compiled programs held in memory (one per model part and input shape).",
                        lambda: programs()["held"])
            scraped.add(GaugeMetricFamily, "sd_keras_compiled_programs_limit",
                        "Most compiled programs held (--max-programs); the least recently used is dropped.",
                        lambda: programs()["limit"])
            # CounterMetricFamily appends "_total" to these names
            scraped.add(CounterMetricFamily, "sd_keras_compilations",
                        "Programs compiled since the server started (each new shape, steps, sampler or mode).",
                        lambda: programs()["compilations"])
            scraped.add(CounterMetricFamily, "sd_keras_compiled_program_evictions",
                        "Compiled programs dropped to stay within --max-programs.",
                        lambda: programs()["evictions"])
        self.registry.register(scraped)

    def render(self):
        """The exposition text of every metric."""
        return prometheus_client.generate_latest(self.registry).decode("utf-8")
