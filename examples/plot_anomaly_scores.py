"""
Anomaly scores: ``score_samples`` against an isolation forest
=============================================================

A density model scores anomalies by how unlikely each row is. Here every
model is fitted on benign breast-cancer biopsies only (30 features,
standardized on the training rows) and scores held-out benign and
malignant ones; the lower the log-density, the more anomalous the row. The
ROC AUC of each score against the labels is compared with
:class:`~sklearn.ensemble.IsolationForest`, the tool a user would try
first.

:class:`~skvae.IsometricVAE` assumes, by default, the same noise in every
feature, as PCA does. The 30 features differ widely in how much of them a
few factors explain, so for a density it needs ``noise="per_feature"``,
which weights each feature's error by its noise under factor analysis
(see the :ref:`user guide <isometric_vae>`).
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from skvae import IsometricVAE, VAETransformer

X, y = load_breast_cancer(return_X_y=True)
benign, malignant = X[y == 1], X[y == 0]
train, held_out = train_test_split(benign, test_size=0.3, random_state=0)
scaler = StandardScaler().fit(train)
X_train = scaler.transform(train)
X_test = scaler.transform(np.r_[held_out, malignant])
is_malignant = np.r_[np.zeros(len(held_out)), np.ones(len(malignant))]

# %%
# Fit and score
# -------------
# Five latents for every VAE, every other parameter at its default.

models = {
    "IsometricVAE, isotropic noise": IsometricVAE(5, random_state=0),
    'IsometricVAE, noise="per_feature"': IsometricVAE(
        5, noise="per_feature", random_state=0
    ),
    "VAETransformer": VAETransformer(5, random_state=0),
    "IsolationForest": IsolationForest(random_state=0),
}
anomaly = {}
for name, model in models.items():
    model.fit(X_train)
    anomaly[name] = -model.score_samples(X_test)
    print(f"{name:<34} ROC AUC {roc_auc_score(is_malignant, anomaly[name]):.3f}")

# %%
# The factor-analysis noise behind ``"per_feature"`` is in
# ``noise_variance_``: a few features are almost fully explained by five
# factors, others hardly at all.

per_feature = models['IsometricVAE, noise="per_feature"']
print(
    "noise variance per standardized feature: "
    f"min {per_feature.noise_variance_.min():.3f}, "
    f"median {np.median(per_feature.noise_variance_):.3f}, "
    f"max {per_feature.noise_variance_.max():.3f}"
)

# %%
# ROC curves
# ----------

fig, ax = plt.subplots(figsize=(5, 5))
for name, score in anomaly.items():
    false_positive, true_positive, _ = roc_curve(is_malignant, score)
    ax.plot(false_positive, true_positive, label=name)
ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
ax.set(
    xlabel="benign rows flagged",
    ylabel="malignant rows flagged",
    title="Anomaly scores on held-out biopsies",
)
ax.legend(loc="lower right", fontsize="small")
plt.tight_layout()
plt.show()
