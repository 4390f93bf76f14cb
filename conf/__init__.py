"""The configs of the commands: in a source checkout this folder, conf/; installed, the
package vae_lightning.conf (pyproject.toml maps one to the other)."""
