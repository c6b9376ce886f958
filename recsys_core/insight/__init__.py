"""Why a model recommends what it does: SHAP attributions with a deletion check, and embedding maps."""
