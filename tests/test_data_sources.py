"""Data sources: datasets tfds downloads fail fast and clearly when offline."""

import os
import socket
import time

import pytest
import tensorflow_datasets as tfds

from alexnet_jax import data_sources
from configs import cifar10
from configs import imagenette


def _offline(monkeypatch):
  """No network: every TCP connection fails; tfds must not get as far as downloading."""
  probed = []

  def unreachable(address, *args, **kwargs):
    probed.append(address)
    raise OSError(101, 'Network is unreachable')

  def no_download(*args, **kwargs):
    raise AssertionError('download_and_prepare ran although the host is unreachable')

  monkeypatch.setattr(socket, 'create_connection', unreachable)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_download)
  return probed


@pytest.mark.parametrize('module,host,url', [
    (cifar10, 'www.cs.toronto.edu',
     'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'),
    (imagenette, 's3.amazonaws.com',
     'https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz'),
])
def test_download_configs_offline_fail_in_seconds_with_the_manual_route(
    module, host, url, monkeypatch, tmp_path):
  """The one file the configured builder needs (imagenette/full-size-v2:
  imagenette2.tgz, not the five other sizes and versions), and the config's own
  file in the command."""
  probed = _offline(monkeypatch)
  config = module.get_config()
  config.dataset.data_dir = str(tmp_path)
  start = time.monotonic()
  with pytest.raises(data_sources.DatasetNotFoundError) as e:
    data_sources.for_dataset(data_sources.Dataset(**config.dataset),
                             config.input.resize_size, config.input.antialias)
  assert time.monotonic() - start < 30  # no minutes of retries
  assert probed == [(host, 443)]
  message = str(e.value)
  manual_dir = os.path.join(str(tmp_path), 'downloads', 'manual')
  config_file = f'configs/{module.__name__.split(".")[-1]}.py'
  for part in (f'{host}:443 is not reachable', 'Network is unreachable',
               f'fetch the one file it needs, {url} (',
               f'into {manual_dir} (config.dataset.manual_dir)',
               f'python -m alexnet_jax.prepare --config={config_file} --tfds_build '
               f'--config.dataset.data_dir={tmp_path}\n', '--config.dataset.data_dir='):
    assert part in message, part
  assert message.count('https://') == 1 and 'ilsvrc' not in message, message
  assert 'Traceback' not in message


def test_files_in_manual_dir_are_used_without_probing(monkeypatch, tmp_path):
  probed = _offline(monkeypatch)
  config = cifar10.get_config()
  config.dataset.data_dir = str(tmp_path / 'data')
  config.dataset.manual_dir = str(tmp_path / 'manual')
  os.makedirs(config.dataset.manual_dir)
  with open(os.path.join(config.dataset.manual_dir, 'cifar-10-binary.tar.gz'), 'wb'):
    pass
  builder = data_sources._tfds_builder(config.dataset)  # pylint: disable=protected-access
  data_sources.check_download_reachable(builder, config.dataset)
  assert not probed
