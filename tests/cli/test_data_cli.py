import anndata as ad
import pytest
from typer.testing import CliRunner

from lingshu.cli import app
from lingshu.data.paths import dataset_path

runner = CliRunner()


def test_the_pretraining_corpus_is_written_with_its_panels(tmp_path):
    try:
        dataset_path("kang2018_ctrl_stim", download=False)
    except FileNotFoundError as error:
        pytest.skip(f"real Kang data not found: {error}")
    out = tmp_path / "corpus.h5ad"
    result = runner.invoke(app, ["data", "pretraining-corpus", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "kang2018_donors: 750 cells x 1267 genes" in result.output
    corpus = ad.read_h5ad(out)
    assert corpus.obs["panel"].nunique() == 4 and f"({corpus.n_obs:,} cells x" in result.output
    bad = runner.invoke(app, ["data", "pretraining-corpus", "--recipe", "mouse", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown recipe" in bad.output
