"""Model building and training (Keras/TensorFlow). Submodules import Keras lazily."""
