"""Selection: which checkpoint goes on the robot, and how much to trust that choice.

Public API (see selection/README.md)::

    # logged real data (rosbag2, no ROS needed) and the project's sim episodes
    from selection import BagWriter, RealEpisode, read_bag, iter_episodes, bag_info, episodes_from_sim, \
        write_episodes_to_bag
    # the proxy-real stand-in for the real cell (development and validation only)
    from selection import ProxyRealDomain, record_logs, ground_truth
    # OOD scores of real observations in each checkpoint's feature / output space
    from selection import OODConfig, build_reference, score, ood_scores_for_checkpoint, collect_reference_obs
    # combined ranking, rule choice, the ranking job, promotion
    from selection import rank, choose_rule, Validation, rank_checkpoints, promote
    # ranking-quality metrics, fidelity against a reality, and the data utilization law
    from selection import mmrv, ranking_quality, compare_ranking, local_ratio, global_ratio, allocate_budget
    from selection import fidelity_metrics, no_verdict_reason, fidelity_scatter
"""

from selection.fidelity import Estimate, fidelity_metrics, fidelity_scatter, no_verdict_reason
from selection.job import OODSettings, RankResult, rank_checkpoints
from selection.metrics import (
    MetricWarning,
    RankingComparison,
    SelectionMetricsError,
    bootstrap_interval,
    compare_ranking,
    kendall_tau,
    load_real_results,
    load_scores,
    mmrv,
    pearson,
    ranking_quality,
    regret_at_1,
    spearman,
    topk_recall,
)
from selection.ood import (
    OODConfig,
    OODError,
    OODReference,
    OODScores,
    build_reference,
    collect_reference_obs,
    ood_scores_for_checkpoint,
    score,
    stack_episodes,
)
from selection.promotion import CHALLENGER, CHAMPION, PromotionError, PromotionResult, find_model_version, promote
from selection.proxy_real import DOMAIN as PROXY_REAL
from selection.proxy_real import ProxyRealDomain, ProxyRealError, ground_truth, record_logs
from selection.ranking import (
    COMBINED_RULES,
    DEFAULT_RULE,
    RULES,
    RankingError,
    RuleChoice,
    Validation,
    choose_rule,
    load_validations,
    rank,
    rule_scores,
)
from selection.realdata import (
    BagNotFoundError,
    BagWriter,
    CameraIntrinsics,
    CorruptBagError,
    EmptyBagError,
    EpisodeEventError,
    Frames,
    JointNameError,
    MissingTopicError,
    PoseTrack,
    RealDataError,
    RealDataWarning,
    RealEpisode,
    bag_info,
    episodes_from_sim,
    hold,
    iter_episodes,
    read_bag,
    write_episodes_to_bag,
)
from selection.utilization import (
    Allocation,
    LocalRatio,
    PowerLawFit,
    UtilizationError,
    allocate_budget,
    fit_power_law,
    global_ratio,
    include_other,
    local_ratio,
    speed_ratio,
)

__all__ = [
    "Estimate",
    "fidelity_metrics",
    "fidelity_scatter",
    "no_verdict_reason",
    "OODSettings",
    "RankResult",
    "rank_checkpoints",
    "MetricWarning",
    "RankingComparison",
    "SelectionMetricsError",
    "bootstrap_interval",
    "compare_ranking",
    "kendall_tau",
    "load_real_results",
    "load_scores",
    "mmrv",
    "pearson",
    "ranking_quality",
    "regret_at_1",
    "spearman",
    "topk_recall",
    "OODConfig",
    "OODError",
    "OODReference",
    "OODScores",
    "build_reference",
    "collect_reference_obs",
    "ood_scores_for_checkpoint",
    "score",
    "stack_episodes",
    "CHALLENGER",
    "CHAMPION",
    "PromotionError",
    "PromotionResult",
    "find_model_version",
    "promote",
    "PROXY_REAL",
    "ProxyRealDomain",
    "ProxyRealError",
    "ground_truth",
    "record_logs",
    "COMBINED_RULES",
    "DEFAULT_RULE",
    "RULES",
    "RankingError",
    "RuleChoice",
    "Validation",
    "choose_rule",
    "load_validations",
    "rank",
    "rule_scores",
    "BagNotFoundError",
    "BagWriter",
    "CameraIntrinsics",
    "CorruptBagError",
    "EmptyBagError",
    "EpisodeEventError",
    "Frames",
    "JointNameError",
    "MissingTopicError",
    "PoseTrack",
    "RealDataError",
    "RealDataWarning",
    "RealEpisode",
    "bag_info",
    "episodes_from_sim",
    "hold",
    "iter_episodes",
    "read_bag",
    "write_episodes_to_bag",
    "Allocation",
    "LocalRatio",
    "PowerLawFit",
    "UtilizationError",
    "allocate_budget",
    "fit_power_law",
    "global_ratio",
    "include_other",
    "local_ratio",
    "speed_ratio",
]
