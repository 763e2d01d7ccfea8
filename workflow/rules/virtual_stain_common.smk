# Helpers of workflow/rules/virtual_stain.smk: the virtual_stain sheet (validated at parse time),
# its datasets and the stage's own config keys.
from calflow.virtual_stain.sheet import load_sheet
from calflow.virtual_stain.stage import VirtualStainParams

VS = config["virtual_stain"]
try:
    VS_SHEET = load_sheet(VS["sheet"], SCHEMAS) if VS["sheet"] else None
except CalflowInputError as err:
    sys.exit(f"calflow: {err}")
VS_DATASETS = sorted(set(VS_SHEET["dataset"])) if VS_SHEET is not None else []
# the stage's own tunables (the VirtualStainParams fields): the sheet path and the demo simulator re-run
# nothing here
VS_PARAMS = {k: v for k, v in VS.items() if k in VirtualStainParams.__dataclass_fields__}


wildcard_constraints:
    dataset="|".join(map(re.escape, VS_DATASETS)) or "^$",
    pair="[A-Za-z0-9][A-Za-z0-9_.-]*",


def virtual_stain_targets():
    return expand("results/virtual_stain/{dataset}/metrics.json", dataset=VS_DATASETS)


def virtual_stain_rows(wildcards):
    rows = VS_SHEET[VS_SHEET["dataset"] == wildcards.dataset]
    return rows[["image", "label_free", "fluorescence", "split"]].to_dict("records")
