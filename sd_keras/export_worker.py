"""``python -m sd_keras.export_worker prepare JOB``: the process in which ``export_bundle`` given a model spec
loads the model (``sd_keras.loading.load``) and does all the work that needs it (``exporter.run_worker_job``);
it exits before any converter runs. Not meant to be run by hand."""

import sys

from sd_keras.export import exporter
from sd_keras.loading import load


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in exporter.WORKER_STAGES:
        return f"usage: python -m sd_keras.export_worker {{{','.join(exporter.WORKER_STAGES)}}} JOB"
    exporter.run_worker_job(argv[0], argv[1], load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
