"""Published defaults of the evaluation, written once (no heavy imports, so that the
command line can show them in ``--help`` without loading numpy or scipy).
"""

# Anima's animaSegPerfAnalyzer, which scored MSSEG-2 (paper 001): command-line
# defaults -v 3 (mm3, strictly larger), -x 0.10 (alpha), -y 0.70 (beta), -z 0.65
# (gamma); ITK's connected components without full connectivity: 6 in 3D.
CONNECTIVITY = 6
MIN_LESION_MM3 = 3.0
ALPHA = 0.10
BETA = 0.70
GAMMA = 0.65

# Walsh et al. (paper 004): a lesion is found when >= 10 % of it is covered; a
# predicted lesion is false when > 70 % of it lies outside the truth.
RULE_10_70_MIN_COVERAGE = 0.10
RULE_10_70_MAX_OUTSIDE = 0.70

# Prados & Kanber's smoothed Dice (paper 001, eq. 1).
DICE_SMOOTHING = 1e-6

# HD95: max of the two directed 95th percentiles (MONAI, Metrics Reloaded) by
# default, or the 95th percentile of both directions pooled (medpy).
HD95_DEFINITIONS = ("max-directed", "pooled")
HD95 = "max-directed"
