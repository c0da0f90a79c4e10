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
        ("granularities: [fortnight]\n", "granularities.0"),  # week is one since issue 39
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


# ---- granularities quarter, week and day; exclude_periods (issue 39) --------------------------------------------


def test_finer_granularities_take_whole_years_or_bounds_of_their_own(tmp_path):
    weekly = load_config(write(tmp_path, MINIMAL.replace('"2014", end: "2016"', '"2015", end: "2016"') + "granularities: [week]\n"))
    weeks = weekly.period_list("week")  # whole ISO years: 2015 has 53 weeks, and 2016-01-01..03 are in 2015-W53
    assert (weeks[0], weeks[-1], len(weeks)) == ("2015-W01", "2016-W52", 53 + 52) and "2015-W53" in weeks
    quarters = load_config(write(tmp_path, MINIMAL + "granularities: [quarter]\n")).period_list("quarter")
    assert (quarters[0], quarters[-1], len(quarters)) == ("2014-Q1", "2016-Q4", 12)
    days = load_config(write(tmp_path, MINIMAL + "granularities: [day]\n")).period_list("day")
    assert (days[0], days[-1], len(days)) == ("2014-01-01", "2016-12-31", 365 + 365 + 366) and "2016-02-29" in days
    text = MINIMAL.replace('"2014", end: "2016"', '"2016-W10", end: "2016-W15"') + "granularities: [week]\n"
    assert load_config(write(tmp_path, text)).period_list("week") == [f"2016-W{w:02d}" for w in range(10, 16)]
    text = MINIMAL.replace('"2014", end: "2016"', '"2015", end: "2016-Q2"') + "granularities: [quarter]\n"
    assert load_config(write(tmp_path, text)).period_list("quarter")[-3:] == ["2015-Q4", "2016-Q1", "2016-Q2"]


@pytest.mark.parametrize("periods, granularities, culprit", [
    ('{start: "2016-W10", end: "2016-03"}', "[week]", "two granularities (month and week)"),
    ('{start: "2016-W10", end: "2016-W05"}', "[week]", "periods.end 2016-W05 is before periods.start 2016-W10"),
    ('{start: "2016-W10", end: "2016-W15"}', "[year]", "week bounds (2016-W10, 2016-W15) are for runs of granularity week"),
    ('{start: "2016-W10", end: "2016-W15"}', "[month]", "with granularities month give years here"),
    ('{start: "2016-03", end: "2016-05"}', "[month, week]", "month bounds (2016-03, 2016-05)"),
    ('{start: "2015", end: "2015-W53"}', "[week]", None),
    ('{start: "2014", end: "2014-W53"}', "[week]", "'2014-W53'"),
    ('{start: "2016", end: "2016"}', "[fortnight]", "got 'fortnight'"),
])
def test_bad_finer_bounds_and_granularities_are_named(tmp_path, periods, granularities, culprit):
    text = f'corpus: {{source: "demo:trump_tweets"}}\nperiods: {periods}\ngranularities: {granularities}\n'
    if culprit is None:
        assert load_config(write(tmp_path, text)).period_list("week")[-1] == "2015-W53"
        return
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert culprit in str(err.value)


def test_excluded_periods_leave_every_list_and_are_checked(tmp_path):
    text = MINIMAL + "granularities: [year, month]\n"
    config = load_config(write(tmp_path, text), ["exclude_periods=['2015-02', '2016']"])
    assert config.period_list("year") == ["2014", "2015"] and "2015-02" not in config.period_list("month")
    assert len(config.period_list("month")) == 35 and len(config.all_periods()) == 37
    assert load_config(write(tmp_path, text)).exclude_periods == []  # the default leaves the study whole
    with pytest.raises(ConfigError, match=r"exclude_periods: 2019 is not a period of the study \(year 2014..2016, month "):
        load_config(write(tmp_path, text), ["exclude_periods=['2019']"])
    with pytest.raises(ConfigError, match="exclude_periods: Value error, bad period '2015-W99'"):
        load_config(write(tmp_path, text), ["exclude_periods=['2015-W99']"])
    with pytest.raises(ConfigError, match="exclude_periods leaves no year period of 2014..2016"):
        load_config(write(tmp_path, text), ["exclude_periods=['2014', '2015', '2016']"])
    with pytest.raises(ConfigError, match="corpus.min_examples"):
        load_config(write(tmp_path, text), ["corpus.min_examples=-1"])


def test_the_weekly_demo_config_loads():
    config = load_config(demo_config_path("weekly"))
    assert config.granularities == ["week"] and config.tasks == ["lm", "classification"]
    weeks = config.period_list("week")
    assert (weeks[0], weeks[-1], len(weeks)) == ("2016-W01", "2017-W52", 104)
    assert config.corpus.min_examples > 0 and config.base == load_config(demo_config_path("tiny")).base
