"""Evaluate a checkpoint: `python eval.py ckpt_path=PATH [data=NAME] [eval.iwae_k=K]`; see
conf/eval.yaml. Prints a table and writes metrics.json in the run directory of the evaluation."""

from vae_lightning.commands import eval_command

if __name__ == "__main__":
    eval_command()
