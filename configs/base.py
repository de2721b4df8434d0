"""Default values of every config key; a config module overrides some of them.

Keys and defaults follow the original arcface_torch ``configs/base.py``. Keys marked *new* do not
exist there; their defaults reproduce the original's behaviour.
"""
from easydict import EasyDict as edict

config = edict()

# Margin-based softmax: (m1, m2, m3) of s*(cos(m1*theta + m2) - m3). ArcFace (1.0, 0.5, 0.0), CosFace (1.0, 0.0, 0.4)
config.margin_list = (1.0, 0.5, 0.0)
config.margin_scale = 64.0              # new: the scale s (hard-coded 64 in the original)
config.margin = "combined"              # new: margin head (losses.get_margin); "combined" = margin_list as above
config.margin_params = {}               # new: that head's parameters, e.g. {"h": 0.333} (README "Margin heads")
config.network = "r50"
config.resume = False                   # False | True (checkpoint must exist) | "auto" (resume when one exists)
config.save_all_states = False
config.save_checkpoint = False          # the seed fork's name for save_all_states (either one turns it on)
config.output = None                    # None -> work_dirs/<config file name>

config.embedding_size = 512
config.pretrained = None                # new: initialise the backbone from this model.pt (fine-tuning)
config.pretrained_strict = True         # new: every key must fit; False loads the fitting ones and lists the rest

# Partial FC
config.sample_rate = 1.0                # fraction of class centres per step; 0 = the positives only
config.interclass_filtering_threshold = 0.0

config.fp16 = False                     # CUDA: float16 autocast + GradScaler; CPU: bfloat16 autocast (no scaler)
config.batch_size = 128

# Optimiser: "sgd" (lr 0.1, weight_decay 5e-4) or "adamw" (lr 0.001, weight_decay 0.1)
config.optimizer = "sgd"
config.lr = 0.1
config.momentum = 0.9
config.weight_decay = 5e-4
config.clip_grad_norm = 5.0             # new: max norm of the backbone gradient (the original's 5)

config.verbose = 2000                   # run verification every `verbose` steps
config.frequent = 10                    # log every `frequent` steps

# Data
config.rec = "synthetic"                # folder with train.rec/train.idx (or an image folder); "synthetic" = random data
config.num_classes = "auto"             # int, or "auto": read from the data
config.num_image = "auto"               # int, or "auto": read from the data
config.num_epoch = 20
config.warmup_epoch = 0                # -1 (the original's 3millions.py) = no warm-up, as 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
config.val_targets_missing = "error"    # new: a val_targets entry without its <rec>/<name>.bin stops start-up; "warn" skips it
config.image_size = (112, 112)          # new: only 112x112 aligned faces are supported (anything else is refused)
config.dali = False                     # NVIDIA DALI data loading (GPU decode when CUDA is present)
config.dali_aug = False
config.num_workers = 2
config.demo_data = False               # new: generate the built-in demo data set in `rec` when missing (configs/demo.py)
config.max_bad_samples = 0              # new: undecodable records to skip (with a warning each) before stopping

# Augmentation (new keys; the original always flips and does nothing else)
config.aug_flip = True
config.aug_random_erasing = 0.0         # probability of torchvision-style RandomErasing
config.aug_randaugment = False          # RandAugment colour/geometry ops (IDiff-Face recipe)
config.aug_randaugment_num_ops = 2
config.aug_randaugment_magnitude = 9

# LR schedule (new keys): "poly" (the original's PolynomialLRWarmup) or "step"
config.lr_scheduler = "poly"
config.lr_power = 1.0                   # exponent of the polynomial decay
config.lr_steps = ()                    # epochs at which "step" multiplies the LR by lr_gamma, e.g. (12, 20, 24)
config.lr_gamma = 0.1

# Gradient accumulation
config.gradient_acc = 1

# Speed and memory (new keys)
config.gradient_checkpointing = None    # recompute block activations in backward: None = the network's
                                        # default (on for vit_b, vit_l, vit_h), False = off, True = on
config.channels_last = False
config.compile = False                  # torch.compile the backbone

# Checkpoints (new keys)
config.checkpoint_every = 0             # also write checkpoint_gpu_{rank}.pt every N steps (0 = per epoch only)
config.overwrite = False                # new: a fresh run may replace an earlier run in `output` (else refused)
config.check_data = "fast"              # new: "fast" (headers, labels) | "full" (also decode every image once)

config.seed = 2048
config.verification_batch_size = 256    # new: the original used 10 (slow; results do not depend on it)

# TensorBoard
config.tensorboard = True

# WandB (rank 0 logs loss, LR, verification accuracies and the config, secrets masked; save_artifacts
# adds model.pt as an artifact; wandb_resume continues the same W&B run). Key: wandb_key or WANDB_API_KEY;
# WANDB_MODE=offline needs none.
config.wandb_key = "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
config.suffix_run_name = None
config.using_wandb = False
config.wandb_entity = "entity"
config.wandb_project = "project"
config.wandb_log_all = True
config.save_artifacts = False
config.wandb_resume = False
