import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


# `--config "omniglot={strict: true}"` gives nested values as strings ('true', '1'): read them
# as YAML, as the config file is read, before checking the types.
for section in ("omniglot", "miniimagenet"):
    for key, value in config.get(section, {}).items():
        if key != "source" and isinstance(value, str):
            config[section][key] = yaml.safe_load(value)

validate(config, schema="../schemas/config.schema.yaml")


def data_targets():
    """The dataset files the configuration can build: Omniglot always, miniImageNet once its
    source is set."""
    targets = ["resources/omniglot.h5"]
    if config["miniimagenet"]["source"]:
        targets.append("resources/miniimagenet.h5")
    return targets


def omniglot_strict(wildcards):
    return "--strict" if config["omniglot"]["strict"] else ""


def miniimagenet_source(wildcards):
    """The configured miniImageNet folder; without one, stop before any job runs."""
    source = config["miniimagenet"]["source"]
    if not source:
        raise WorkflowError(
            "resources/miniimagenet.h5 needs a local copy of miniImageNet, which has no free "
            "download: set `miniimagenet: {source: PATH}` in config.yaml (or pass --config "
            "\"miniimagenet={source: PATH}\"); `dmaml prepare-miniimagenet --help` lists the "
            "accepted forms and where people get them."
        )
    return source


def miniimagenet_aggregate(wildcards):
    if config["miniimagenet"]["aggregate_val_test"]:
        return "--aggregate-val-test"
    return "--no-aggregate-val-test"
