"""The Hydra configs, shipped inside the package (`pkg://ilora.conf`); `conf/` at the repository root links here."""
