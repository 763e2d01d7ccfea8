"""Virtual staining: predict a fluorescence marker from label-free (phase-contrast) images.

Pairs of label-free and fluorescence images are cut into blocks (:mod:`.blocks`); each block is
labelled positive when the binarised fluorescence covers at least a given fraction of it; a small
CNN (:mod:`.model`) learns the label from the label-free block, its hyperparameters chosen by an
optuna search within a budget (:mod:`.search`); held-out images are scored and their block
probabilities rebuilt into a full-size "virtual stain" map (:mod:`.stage`). :mod:`.simulate`
makes paired images with known positives for the demo and the tests.
"""
