# JigClu / MoCo linear benchmark on ImageNet-1k, ResNet-50 frozen: dvlab-research/JigsawClustering
# main_lincls.py (the same file as facebookresearch/moco main_lincls.py) with the JigClu README's command:
# fc on globally pooled res5, normal(0, 0.01) weights and zero bias, trunk in eval mode (BN statistics
# frozen), SGD momentum 0.9, weight decay 0, lr 10.0 (README; MoCo's default is 30), batch 256,
# 100 epochs with lr x0.1 at epochs 60 and 80 (--schedule default), evaluated every epoch.
# Train view RandomResizedCrop 224 + flip, val view Resize 256 + CenterCrop 224.
# JigClu's published ImageNet top-1 with this recipe: 66.4 (200-epoch JigClu pretraining).
#
#   python tools/train_linear.py --config-file configs/eval/linear_jigclu_R50.py --num-gpus 8 \
#       train.weights_init.PARAMS_FILE=output/jigclu_R50/model_final.pth
import torch
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from detectron2.solver.build import get_default_optimizer_params

from d2ssl.data import build_ssl_train_loader
from d2ssl.data.datasets import load_image_folder
from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.evaluation.evaluator import ClassificationEvaluator
from d2ssl.evaluation.models import TrunkClassifier

from ..common.models import r50_trunk
from ..common.schedules import multistep
from ..common.train import train

IMAGENET_TRAIN_IMAGES = 1281167
BATCH = 256
EPOCH_ITERS = -(-IMAGENET_TRAIN_IMAGES // BATCH)  # 5005

dataloader = dict(
    train=L(build_ssl_train_loader)(
        dataset=L(load_image_folder)(root="datasets/imagenet/train"),
        mapper=L(ClassificationMapper)(train=True, crop_size=224),
        total_batch_size=BATCH,  # MoCo/JigClu: 256 over all GPUs
        num_workers=8,
        seed=0,
    ),
    # Per-process batch (MoCo evaluates 256 at once on one node of 8 GPUs).
    test=L(build_detection_test_loader)(
        dataset=L(load_image_folder)(root="datasets/imagenet/val"),
        mapper=L(ClassificationMapper)(train=False, resize_size=256, crop_size=224),
        batch_size=32,
        num_workers=8,
    ),
    evaluator=L(ClassificationEvaluator)(topk=(1, 5)),
    # Model selection (d2ssl.evaluation.linear): the reported numbers are the last evaluation's on
    # dataloader.test. main_lincls.py keeps its "best" acc1 on its val loader, ImageNet val, the very split
    # it reports (optimistic); here model_best.pth is selected only on a validation split: a data set node
    # (dataset=..., evaluated with the test loader's view) or fraction=0.1 held out of every training class
    # from seed. Neither (the reference's setting): no model_best.pth, the "best" is labelled optimistic.
    val=dict(dataset=None, fraction=0.0, seed=0),
)

model = L(TrunkClassifier)(
    trunk=r50_trunk(),
    heads={"fc": dict(feature="res5", pool=None, use_bn=False, init_std=0.01)},
    num_classes=1000,  # checked against the labels; null takes it from them (resolve_num_classes)
    input_size=224,
    freeze_trunk=True,
)

# get_default_optimizer_params skips the frozen trunk (requires_grad=False): only fc is optimized.
optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(), lr=10.0, momentum=0.9, weight_decay=0.0, nesterov=False
)
lr_multiplier = multistep(milestones=[60, 80], num_epochs=100)

train.epochs = 100
train.eval_period = EPOCH_ITERS  # main_lincls.py validates after every epoch
train.checkpointer.period = EPOCH_ITERS
train.output_dir = "output/linear_jigclu_R50"
