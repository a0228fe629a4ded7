"""The aggregation rule chosen by the settings: an explicit table, not a scan of classes.

Position: ``trainer federate`` asks here for the aggregator of ``FederateSettings.rule``
(``fedavg`` from ``aggregate``, ``trimmed_mean`` and ``median`` from ``robust``; with central
DP, the noised equal-weight mean of ``privacy``).
"""

from __future__ import annotations

from trainer.federate.aggregate import Aggregator, MeanAggregator
from trainer.federate.privacy import GaussianMeanAggregator
from trainer.federate.robust import BufferedAggregator
from trainer.federate.settings import FederateSettings


def make_aggregator(settings: FederateSettings, size: int) -> Aggregator:
    """The aggregator of ``settings.rule`` for updates of ``size`` parameters."""
    if settings.privacy is not None:  # central DP: fedavg, equal weights, noised sum
        return GaussianMeanAggregator(size, settings.privacy)
    if settings.rule == "fedavg":
        return MeanAggregator(size)
    if settings.rule == "trimmed_mean":
        return BufferedAggregator(size, "trimmed_mean", trim_fraction=settings.trim_fraction)
    return BufferedAggregator(size, "median")
