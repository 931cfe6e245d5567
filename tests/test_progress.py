import io

from rich.console import Console

from corolla.cli.progress import LiveProgress
from corolla.workflows import RoundRecord


def test_live_display_renders_round_replies_metrics_and_eta():
    buf = io.StringIO()
    p = LiveProgress(Console(file=buf, force_terminal=True, width=120))
    with p:
        p.round_started(1, 3, "train", 4)
        p.reply(True)
        p.reply(False)
        text = p._render().plain
        assert "round 1/3" in text and "train 1/4 replied (1 failed)" in text and "ETA ?" in text
        p.round_finished(RoundRecord(round=1, server={"accuracy": 0.5}, train={"loss": 1.25}), {})
        p.round_started(2, 3, "train", 4)
        text = p._render().plain
        assert "server.accuracy=0.5" in text and "train.loss=1.25" in text and "ETA ?" not in text


def test_plain_lines_when_not_a_terminal(capsys):
    p = LiveProgress(Console(file=io.StringIO(), force_terminal=False))
    with p:
        p.round_started(1, 2, "train", 2)
        p.round_finished(RoundRecord(round=1, evaluate={"accuracy": 0.75}), {})
    assert "round 1: evaluate.accuracy=0.75" in capsys.readouterr().err
