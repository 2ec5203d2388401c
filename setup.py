from setuptools import find_packages, setup

setup(name='mmolor', version='0.1.0', packages=find_packages(include=['mmolor*']),
      extras_require={'tests': ['pytest']})
