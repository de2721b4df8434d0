from easydict import EasyDict as edict

# values from the original arcface_torch configs/wf12m_conflict_r50_pfc03_filter04.py (deepinsight/insightface,
# recognition/arcface_torch at d9cb10e); `rec` is where the original kept the data (a tmpfs):
# point it at your copy, e.g. `--set rec=/data/WebFace12M_Conflict`.

config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "r50"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 0.3
config.interclass_filtering_threshold = 0.4
config.fp16 = True
config.weight_decay = 5e-4
config.batch_size = 128
config.optimizer = "sgd"
config.lr = 0.1
config.verbose = 2000
config.dali = False

config.rec = "/train_tmp/WebFace12M_Conflict"
config.num_classes = 1017970
config.num_image = 12720066
config.num_epoch = 20
config.warmup_epoch = config.num_epoch // 10
config.val_targets = []
