"""The built-in CPU demo with the AdaFace head: python train_v2.py configs/demo_adaface.py

Same data and network as configs/demo.py: on first use train_v2.py generates (``demo_data = True``)
a synthetic face-identity set in `config.rec`, and a MobileFaceNet trains on the CPU. The margin is
AdaFace with its published parameters (m 0.4, h 0.333, s 64, t_alpha 0.01). The verification accuracy
logged as `[demo_val][step]Accuracy-Highest` climbs from about chance like the ArcFace demo's.
"""
from easydict import EasyDict as edict

config = edict()
config.network = "mbf_tiny"
config.channels_last = True
config.embedding_size = 128
config.margin = "adaface"
config.margin_params = {"m": 0.4, "h": 0.333, "t_alpha": 0.01}
config.rec = "work_dirs/demo_data"
config.demo_data = True               # train_v2 generates the data in `rec` when it is missing
config.output = "work_dirs/demo_adaface"
config.val_targets = ["demo_val"]
config.num_classes = "auto"
config.num_image = "auto"
config.batch_size = 64
config.lr = 0.1
config.weight_decay = 5e-4
config.num_epoch = 2
config.warmup_epoch = 1
config.frequent = 10
config.verbose = 31
config.num_workers = 2
config.fp16 = False
config.save_all_states = True
config.verification_batch_size = 200
