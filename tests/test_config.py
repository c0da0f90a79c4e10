import pytest

from timevec.config import (
    ConfigError,
    ExperimentConfig,
    TrainingConfig,
    dump_config,
    load_config,
)
from timevec.demo import demo_config_path


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


MINIMAL = """
corpus: {source: "demo:trump_tweets", label_column: source}
periods: {start: "2014", end: "2016"}
"""


def test_bundled_configs_load():
    for name in ("demo", "tiny"):
        config = load_config(demo_config_path(name))
        assert config.periods.start <= config.periods.end
        assert config.all_periods()


def test_minimal_config_and_period_lists(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.period_list("year") == ["2014", "2015", "2016"]
    months = config.period_list("month")
    assert months[0] == "2014-01" and months[-1] == "2016-12" and len(months) == 36


def test_a_relative_ray_storage_path_is_pinned_where_the_config_loads(tmp_path, monkeypatch):
    # Tune runs trials in their own working directories: ./tune must keep naming this folder there
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, MINIMAL + "ray: {storage_path: ./tune}\n"))
    assert config.ray.storage_path == str(tmp_path / "tune")
    remote = load_config(write(tmp_path, MINIMAL + "ray: {storage_path: 's3://b/p?endpoint_override=h:1'}\n"))
    assert remote.ray.storage_path == "s3://b/p?endpoint_override=h:1"


def test_unknown_key_is_named_with_the_file(tmp_path):
    path = write(tmp_path, MINIMAL + "training: {lr: 0.001, learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "training.learning_rate: unknown key" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "extra, culprit",
    [
        ("training: {lr: -1}\n", "training.lr"),
        ("training: {batch_size: 0}\n", "training.batch_size"),
        ("periods: {start: '2017', end: '2014'}\n", "periods"),
        ("periods: {start: '20x4', end: '2016'}\n", "periods.start"),
        ("interpolation: {alphas: [0.0, 1.5]}\n", "interpolation.alphas"),
        ("analogy: {alpha1: []}\n", "analogy.alpha1"),
        ("ray: {max_concurrent_runs: 0}\n", "ray.max_concurrent_runs"),
        ("ray: {cpus_per_run: 0}\n", "ray.cpus_per_run"),
        ("tasks: [lm, translation]\n", "tasks.1"),
        ("store: {url: s3://b/p, storage_options: {aws_secret_access_key: x}}\n", "store.storage_options"),
        ("store: {url: s3://b/p, storage_options: {aws_access_key_id: x}}\n", "aws_access_key_id"),
        ("store: {url: s3://b/p, storage_options: {client_kwargs: {aws_session_token: x}}}\n", "client_kwargs.aws_session_token"),
        ("store: {url: s3://b/p, storage_options: {key: x}}\n", "storage_options.key"),
        ("corpus: {source: x.jsonl, bad_dates: ignore}\n", "corpus.bad_dates"),
        ("corpus: {source: s3://b/x.jsonl, storage_options: {secret: x}}\n", "corpus.storage_options"),
        ("granularities: [week]\n", "granularities.0"),
    ],
)
def test_bad_values_name_their_key(tmp_path, extra, culprit):
    text = MINIMAL
    # a later mapping for the same top-level key replaces the earlier one in YAML
    if extra.split(":")[0] in ("periods", "corpus"):
        text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith(extra.split(":")[0]))
        if extra.startswith("corpus"):
            text += "\nperiods: {start: '2014', end: '2016'}\n"
        else:
            text += '\ncorpus: {source: "demo:trump_tweets", label_column: source}\n'
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text + extra))
    assert culprit in str(err.value)


def test_cross_field_checks(tmp_path):
    text = 'corpus: {source: "x.jsonl"}\nperiods: {start: "2014", end: "2015"}\ntasks: [classification]\n'
    with pytest.raises(ConfigError, match="label_column"):
        load_config(write(tmp_path, text))


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_and_task_overrides(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ["training.lr=0.01", "store.url=/tmp/x", "tasks=[lm, classification]"])
    assert config.training.lr == 0.01 and config.store.url == "/tmp/x" and config.tasks == ["lm", "classification"]
    with pytest.raises(ConfigError, match="training.nope"):
        config.with_overrides(["training.nope=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        config.with_overrides(["training.lr"])
    training = TrainingConfig(epochs=1, task_overrides={"classification": {"epochs": 3}})
    assert training.for_task("classification").epochs == 3
    assert training.for_task("lm").epochs == 1
    training = TrainingConfig(steps=200, task_overrides={"classification": {"lr": 0.01}}, granularity_overrides={"month": {"steps": 40}})
    run = training.for_task("classification", "month")
    assert (run.steps, run.lr) == (40, 0.01) and training.for_task("lm", "year").steps == 200
    with pytest.raises(ValueError, match="steps"):
        TrainingConfig(granularity_overrides={"month": {"steps": 0}}).for_task("lm", "month")


def test_dump_round_trips(tmp_path):
    config = load_config(demo_config_path("tiny"))
    again = load_config(write(tmp_path, dump_config(config)))
    assert again == config
    assert isinstance(again, ExperimentConfig)
