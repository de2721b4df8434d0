"""The built-in CPU demo: python train_v2.py configs/demo.py

On first use train_v2.py generates (``demo_data = True``) a synthetic face-identity data set (utils/demo_data.py)
in `config.rec`:
200 training identities x 30 images in train.rec/train.idx, and demo_val.bin, 600 verification pairs of
100 held-out identities. A MobileFaceNet then trains on the CPU; the verification accuracy logged as
`[demo_val][step]Accuracy-Highest` climbs from about chance to above 0.9.
"""
from easydict import EasyDict as edict

config = edict()
config.network = "mbf_tiny"
config.channels_last = True           # 2-3x faster grouped-conv backward on CPU
config.embedding_size = 128
config.margin_list = (1.0, 0.5, 0.0)
config.rec = "work_dirs/demo_data"
config.demo_data = True               # train_v2 generates the data in `rec` when it is missing
config.output = "work_dirs/demo"
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
