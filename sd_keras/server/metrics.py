"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Counters and histograms with labels, plus gauges read when scraped. Label values are escaped as the format
requires (backslash, double quote, newline).

Example:
    >>> registry = Metrics()
    >>> requests = registry.counter("demo_requests_total", "Requests.", ("status",))
    >>> requests.inc(status="200")
    >>> print(registry.render().splitlines()[2])
    demo_requests_total{status="200"} 1.0
"""

import bisect
import math
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values, extra=()):
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)] + list(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value):
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name, help_text, label_names=()):
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels):
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def header(self):
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args):
        super().__init__(*args)
        self._values = {}

    def inc(self, amount=1.0, **labels):
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels):
        return self._values.get(self._key(labels), 0.0)

    def lines(self):
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.label_names, key)} {_number(v)}" for key, v in items]


class Gauge(_Metric):
    """A value read from ``read()`` at scrape time."""

    kind = "gauge"

    def __init__(self, name, help_text, read):
        super().__init__(name, help_text)
        self.read = read

    def lines(self):
        return self.header() + [f"{self.name} {_number(self.read())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help_text, label_names=(), buckets=DEFAULT_BUCKETS):
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series = {}  # key -> [bucket counts..., sum, count]

    def observe(self, value, **labels):
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
            index = bisect.bisect_left(self.buckets, value)
            if index < len(self.buckets):
                series[index] += 1
            series[-2] += value
            series[-1] += 1

    def lines(self):
        with self._lock:
            items = sorted((key, list(series)) for key, series in self._series.items())
        out = self.header()
        for key, series in items:
            cumulative = 0
            for bound, count in zip(self.buckets, series):
                cumulative += count
                le = _labels(self.label_names, key, [f'le="{_number(bound)}"'])
                out.append(f"{self.name}_bucket{le} {_number(cumulative)}")
            infinity = _labels(self.label_names, key, ['le="+Inf"'])
            out.append(f"{self.name}_bucket{infinity} {_number(series[-1])}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_number(series[-1])}")
        return out


class Metrics:
    """A set of metrics rendered together."""

    def __init__(self):
        self._metrics = []

    def _add(self, metric):
        self._metrics.append(metric)
        return metric

    def counter(self, name, help_text, label_names=()):
        return self._add(Counter(name, help_text, label_names))

    def gauge(self, name, help_text, read):
        return self._add(Gauge(name, help_text, read))

    def histogram(self, name, help_text, label_names=(), buckets=DEFAULT_BUCKETS):
        return self._add(Histogram(name, help_text, label_names, buckets))

    def render(self):
        lines = []
        for metric in self._metrics:
            lines.extend(metric.lines())
        return "\n".join(lines) + "\n"


class ServerMetrics(Metrics):
    """The metrics of ``sd-keras serve``."""

    def __init__(self, queue):
        super().__init__()
        self.requests = self.counter("sd_keras_http_requests_total", "HTTP requests by endpoint, method and status.",
                                     ("endpoint", "method", "status"))
        self.errors = self.counter("sd_keras_errors_total",
                                   "Errors: failed generations or model loads, and 5xx responses.", ("type",))
        self.jobs = self.counter("sd_keras_jobs_total", "Finished jobs by kind and outcome.", ("kind", "outcome"))
        self.images = self.counter("sd_keras_images_generated_total", "Images generated.")
        self.batched_jobs = self.counter("sd_keras_batched_jobs_total",
                                         "Jobs that ran in one batch together with other compatible jobs.")
        self.generation_seconds = self.histogram(
            "sd_keras_generation_seconds", "Wall time of a job on the worker (a batch counts once per job).",
            ("kind",))
        self.gauge("sd_keras_queue_depth", "Jobs waiting in the queue.", lambda: queue.depth)
        self.gauge("sd_keras_queue_capacity", "Most jobs that may wait.", lambda: queue.max_depth)
        self.gauge("sd_keras_jobs_running", "Jobs in the running batch.", lambda: queue.running)
