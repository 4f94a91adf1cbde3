"""tokalign's SLURM launcher under the name Hydra accepts (`_target_` of conf/hydra/launcher/slurm.yaml).

Hydra instantiates plugins only from the `hydra_plugins` namespace; the code is tokalign.runtime.slurm.
Without the `slurm` extra (hydra-submitit-launcher) there is nothing to register.
"""

try:
    from tokalign.runtime.slurm import TokalignSlurmLauncher
except ImportError:  # pip install "tokalign[slurm]"
    pass
else:

    class SlurmLauncher(TokalignSlurmLauncher):
        pass
