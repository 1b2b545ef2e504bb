"""What the report says in words: its metadata, the meaning of every number, how numbers are
formatted and escaped, and the notes that depend on the run."""

from vidrec.evaluation.report import Report


def _write(tmp_path, sections=(), extra_meta=None):
    report = Report(
        {"ranking": {"auc": 0.7}}, dataset="synthetic:tiny", split="time", seed=0, preset="tiny",
        sections=sections, extra_meta=extra_meta,
    )  # fmt: skip
    paths = report.write_all(tmp_path)
    return paths["markdown"].read_text("utf-8"), paths["html"].read_text("utf-8")


def test_stage_seconds_are_rows_in_stage_order_without_the_running_report():
    from vidrec.pipelines.report import stage_seconds

    manifest = {  # manifest.json stores the stages by name; the report stage is still running
        "stages": {
            "candidate_gen": {"status": "done", "seconds": 5.9},
            "data": {"status": "done", "seconds": 0.288},
            "report": {"status": "running"},
        }
    }
    assert list(stage_seconds(manifest).items()) == [("data", 0.288), ("candidate_gen", 5.9)]


def test_a_dict_in_the_metadata_is_shown_as_rows_not_as_a_python_repr(tmp_path):
    md, page = _write(tmp_path, extra_meta={"stage_seconds": {"data": 0.288, "ranker": 4.0}})
    assert "| stage_seconds.data | 0.288 |" in md and "| stage_seconds.ranker | 4 |" in md
    assert "stage_seconds.data</th><td>0.288</td>" in page
    for text in (md, page):
        assert "{" not in text.split("</style>")[-1] and "None" not in text
        assert "&#x27;data" not in text and "'data'" not in text  # a dict's repr, quoted keys
