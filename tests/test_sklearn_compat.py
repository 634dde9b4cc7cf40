"""scikit-learn's estimator checks, where they apply."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from tldr_index import PCA, TLDR

# Checks that do not apply, and why:
EXPECTED_FAILED = {
    # embeddings are floats: integer/bool input is refused on purpose (usually ids passed by mistake)
    "check_dtype_object": "non-float input is refused with InvalidInputError by design",
    "check_estimators_dtypes": "integer input is refused by design: embeddings are floats",
    "check_fit2d_1feature": "a map to d < D needs D >= 2",
    # float32 output: BLAS rounds a row differently depending on its position (1 ulp, 1.2e-7),
    # above the check's rtol=1e-7 meant for float64
    "check_methods_sample_order_invariance": "float32 outputs agree to 1 ulp, not rtol=1e-7",
}


def _tldr():
    return TLDR(1, n_neighbors=2, epochs=1, batch_size=4, early_stopping=False, random_state=0)


def _expected(est):
    out = dict(EXPECTED_FAILED)
    if isinstance(est, TLDR):
        out["check_fit2d_1sample"] = "one row cannot form a batch of neighbour pairs"
    return out


@parametrize_with_checks([_tldr(), PCA(1)], expected_failed_checks=_expected)
def test_sklearn_compatible(estimator, check):
    check(estimator)
