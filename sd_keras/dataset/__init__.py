"""New data at scale: a prompt table → a sharded, resumable image dataset, on this host or a Ray cluster.

    >>> from sd_keras import dataset
    >>> rows = dataset.expand_template("a {color} {shape}", {"color": "@shapes", "shape": "@shapes"})
    >>> len(rows), rows[0]["prompt"]
    (24, 'a red circle')
    >>> manifest = dataset.generate(rows, "shapes_data/", model="shapes", shard_size=100)  # doctest: +SKIP
    >>> dataset.verify("shapes_data/")["counts"]["written"]                                 # doctest: +SKIP
    24

Modules: ``table`` (reading, checks, template expansion, numbering), ``worker`` (one model → shard records;
the same code in local runs and Ray actors), ``shards`` (WebDataset / Parquet / imagefolder writers),
``manifest`` (what finished, proof of completeness), ``job`` (``generate``: the local pipeline), ``ray_job``
(Ray Data), ``quality`` (optional filters).
"""

from sd_keras.dataset.job import generate
from sd_keras.dataset.manifest import load as load_manifest
from sd_keras.dataset.manifest import verify
from sd_keras.dataset.table import expand_template, read_table, shapes_vocabulary

__all__ = ["generate", "verify", "load_manifest", "expand_template", "read_table", "shapes_vocabulary"]
