"""GAN metrics: FID, KID, precision/recall (and 3D/360° variants) with pluggable feature detectors.

Entry points: ``metrics.registry.calc_metric(name, MetricOptions(...))`` and ``report_metric``; names in
``metrics.registry.METRICS``. ``calc_metrics.py`` is the command line; the training loop calls the same code.
"""
