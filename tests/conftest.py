import os

# scikit-learn's array-API estimator check runs only when SciPy was imported
# with this set; set it before anything imports SciPy so no check is skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")
