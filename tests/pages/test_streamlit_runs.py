"""What the dashboard changes in Streamlit's own handling of a script run."""

import sys


def test_a_script_run_no_longer_clears_keras_but_still_closes_matplotlib_figures(monkeypatch):
    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from streamlit.runtime.scriptrunner import script_runner

    import ui.resources  # noqa: F401  (replaces the hook on import)

    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: cleared.append(True))
    plt.figure()
    assert plt.get_fignums()
    script_runner._clean_problem_modules()  # what ScriptRunner calls after each run
    assert cleared == []
    assert plt.get_fignums() == []
    assert "keras" in sys.modules
