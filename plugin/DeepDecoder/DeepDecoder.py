"""Deep Decoder: 3D Slicer scripted module (Filtering > Denoising) for dd-medical.

The widget binds a parameter node to the GUI; :class:`DeepDecoderLogic` does the work and can be used without the
widget. The logic is a thin adapter: volume node -> numpy (``slicer.util.arrayFromVolume``, KJI order) ->
:func:`dd_medical.api.denoise` -> output volume node with the input's geometry (and, optionally, an uncertainty
volume: the calibrated per-voxel standard deviation, HU for CT, shown as a colour overlay). Long runs go to the
``DeepDecoderDenoise`` CLI module of this extension, which Slicer runs as a separate process, so the viewer stays
responsive (as SlicerMONAIAuto3DSeg does); the CLI calls the same :func:`dd_medical.api.denoise`.
"""

from __future__ import annotations

import logging
from typing import Annotated

import slicer
import vtk
from DeepDecoderLib.logic import (
    DEVICES,
    MODALITIES,
    STRENGTHS,
    UNCERTAINTY_COLOR_NODE_ID,
    UNCERTAINTY_FALLBACK_COLOR_NODE_ID,
    UNCERTAINTY_OPACITY,
    check_uncertainty,
    cli_parameters,
    copy_display,
    denoise_arguments,
    keep_parent_transform,
    modality_note,
    pip_requirements,
    resolve_modality,
    run_settings,
    show_uncertainty_display,
)
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

TORCH_REQUIREMENT = ">=2.2"


#
# DeepDecoder
#


class DeepDecoder(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Deep Decoder")
        self.parent.categories = ["Filtering.Denoising"]
        self.parent.dependencies = []
        self.parent.contributors = ["dd-medical developers"]
        self.parent.helpText = _(
            "Reduces noise in CT and MR volumes with an untrained Deep Decoder (Heckel and Hand, ICLR 2019): a small "
            "network is fitted to each slice alone, from random weights. No training data and no trained model are "
            "used. Denoising can remove fine, low-contrast detail (small or faint lesions) with the noise: compare "
            "with the input. Slow on a CPU; a CUDA GPU is used when present. Not a diagnostic device. "
            '<a href="https://github.com/dd-medical/dd-medical/tree/main/plugin">Documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Method: R. Heckel and P. Hand, Deep Decoder: Concise Image Representations from Untrained "
            "Non-convolutional Networks, ICLR 2019. Module structure from Slicer's scripted module template."
        )


#
# DeepDecoderParameterNode
#


@parameterNodeWrapper
class DeepDecoderParameterNode:
    """The module's parameters, saved with the scene.

    inputVolume - noisy scalar volume (CT in HU, or MR).
    outputVolume - receives the denoised volume (float32, the input's geometry).
    uncertaintyVolume - optional: receives the uncertainty map, the calibrated standard deviation of each denoised
        voxel (HU for CT, stored values for MR; float32, the input's geometry), shown as a colour overlay over the
        output. Needs an ensemble of 2 or more (the default). None: no map is made.
    strength - low / medium / high: the dd_medical.presets denoising preset of that name.
    modality - auto (the series' DICOM modality when CT or MR, else decided from the values), CT or MR: the
        intensity window of the fit (CT: the full HU range; MR: robust percentiles).
    iterations, channels, blocks, ensemble - decoder settings; 0 means the preset's value.
    slab - 2.5D: odd number of adjacent slices fitted together by each decoder; 0 means the preset's value (1).
    fp32 - on a CUDA GPU, fit in float32 instead of bfloat16 (no effect on a CPU).
    compile - on a CUDA GPU, fuse the decoder's kernels with torch.compile (no effect on a CPU).
    device - auto (CUDA when present), cpu or cuda.
    seed - the same seed, input and device give the same output.
    runInBackground - run in a separate process (the DeepDecoderDenoise CLI module) so that Slicer stays responsive.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode
    strength: Annotated[str, Choice(STRENGTHS)] = "medium"
    modality: Annotated[str, Choice(MODALITIES)] = "auto"
    iterations: Annotated[int, WithinRange(0, 20000)] = 0
    channels: Annotated[int, WithinRange(0, 512)] = 0
    blocks: Annotated[int, WithinRange(0, 10)] = 0
    ensemble: Annotated[int, WithinRange(0, 16)] = 0
    slab: Annotated[int, WithinRange(0, 15)] = 0
    fp32: bool = False
    compile: bool = False
    device: Annotated[str, Choice(DEVICES)] = "auto"
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    runInBackground: bool = True


#
# DeepDecoderWidget
#


class DeepDecoderWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: binds widgets of ``Resources/UI/DeepDecoder.ui`` to the parameter node, starts and follows runs."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cliNode = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepDecoder.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepDecoderLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.cancelButton.enabled = False
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: DeepDecoderParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        running = self._cliNode is not None and self._cliNode.IsBusy()
        if self._parameterNode and self._parameterNode.inputVolume:
            dicomModality = self.logic.dicomModality(self._parameterNode.inputVolume)
            self.ui.modalityNoteLabel.text = modality_note(self._parameterNode.modality, dicomModality)
        else:
            self.ui.modalityNoteLabel.text = ""
        if running:
            self.ui.applyButton.toolTip = _("A run is in progress")
            self.ui.applyButton.enabled = False
        elif self._parameterNode and self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Denoise the input volume")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an input volume")
            self.ui.applyButton.enabled = False

    def onApplyButton(self) -> None:
        """Install missing Python packages if the user agrees, then start a run."""
        with slicer.util.tryWithErrorDisplay(_("Deep Decoder denoising failed."), waitCursor=True):
            self.logic.setupPythonRequirements()
            p = self._parameterNode
            if not p.outputVolume:
                p.outputVolume = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode", slicer.mrmlScene.GenerateUniqueName(p.inputVolume.GetName() + " DD")
                )
            settings = dict(strength=p.strength, modality=p.modality, iterations=p.iterations, channels=p.channels,
                            blocks=p.blocks, ensemble=p.ensemble, slab=p.slab, fp32=p.fp32, compile=p.compile,
                            device=p.device, seed=p.seed)
            self.ui.progressBar.value = 0
            if p.runInBackground:
                self._cliNode = self.logic.processInBackground(p.inputVolume, p.outputVolume,
                                                               uncertaintyVolume=p.uncertaintyVolume, **settings)
                self.addObserver(self._cliNode, slicer.vtkMRMLCommandLineModuleNode.StatusModifiedEvent,
                                 self.onCliModified)
                self.ui.cancelButton.enabled = True
                self.ui.statusLabel.text = _("Running in the background...")
            else:
                self.ui.statusLabel.text = _("Running (Slicer is busy until done)...")
                self.logic.process(p.inputVolume, p.outputVolume, progress=self.onProgress,
                                   uncertaintyVolume=p.uncertaintyVolume, **settings)
                self.onFinished(p.outputVolume)
            self._checkCanApply()

    def onCancelButton(self) -> None:
        if self._cliNode is not None:
            self._cliNode.Cancel()

    def onProgress(self, fraction: float) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        slicer.app.processEvents()

    def onCliModified(self, cliNode, event) -> None:
        self.ui.progressBar.value = int(round(cliNode.GetProgress()))
        if cliNode.IsBusy():
            return
        self.removeObserver(cliNode, slicer.vtkMRMLCommandLineModuleNode.StatusModifiedEvent, self.onCliModified)
        self.ui.cancelButton.enabled = False
        status = cliNode.GetStatusString()
        if cliNode.GetStatus() & cliNode.ErrorsMask:
            message = cliNode.GetErrorText().strip() or status
            self.ui.statusLabel.text = _("Failed: {message}").format(message=message.splitlines()[-1])
            slicer.util.errorDisplay(_("Deep Decoder denoising failed."), detailedText=message)
        elif status == "Cancelled":
            self.ui.statusLabel.text = _("Cancelled")
        else:
            self.onFinished(self._parameterNode.outputVolume if self._parameterNode else None)
        self._cliNode = None
        self._checkCanApply()

    def onFinished(self, outputVolume) -> None:
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = _("Done")
        if outputVolume is not None:  # the foreground (the uncertainty overlay, set by the logic) is kept
            slicer.util.setSliceViewerLayers(background=outputVolume, fit=True)


#
# DeepDecoderLogic
#


class DeepDecoderLogic(ScriptedLoadableModuleLogic):
    """Denoising of volume nodes; usable without the widget. Every numerical step is in ``dd_medical``.

    Only the public dd_medical API is used (``dd_medical.api.denoise``), and it is imported inside the
    methods so the module loads before dd-medical is installed.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> DeepDecoderParameterNode:
        return DeepDecoderParameterNode(super().getParameterNode())

    @staticmethod
    def dicomModality(volumeNode) -> str:
        """The DICOM Modality of the series ``volumeNode`` was loaded from (the subject hierarchy's
        ``DICOM.Modality`` attribute, set by Slicer's DICOM import), or "" when it was not loaded from DICOM."""
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        itemID = shNode.GetItemByDataNode(volumeNode) if shNode and volumeNode else 0
        if not itemID:
            return ""
        attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
        return shNode.GetItemAttribute(itemID, attribute) or ""

    @staticmethod
    def setupPythonRequirements(askConfirmation: bool = True) -> None:
        """Install PyTorch (through the PyTorch extension's PyTorchUtils) and dd-medical (pip) when missing.

        Slicer's own pydicom (2.4 up to Slicer 5.10, which its DICOM modules need) is pinned at its installed
        version during the install, so pip never replaces it; dd-medical runs on pydicom 2.4 and 3.x.
        """
        try:
            import PyTorchUtils
        except ModuleNotFoundError as err:
            raise RuntimeError(
                _("This module needs the PyTorch extension: install it in the Extensions Manager, then restart.")
            ) from err
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            logging.info("PyTorch is missing: installing it through PyTorchUtils")
            torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                raise RuntimeError(_("PyTorch must be installed to use this module (PyTorch extension)."))
        try:
            import dd_medical  # noqa: F401
        except ModuleNotFoundError:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("This module needs the Python package dd-medical (and its dependencies). Install it now?")
            ):
                raise RuntimeError(_("dd-medical is not installed.")) from None
            slicer.util.pip_install(pip_requirements(DeepDecoderLogic._installedVersion("pydicom")))

    @staticmethod
    def _installedVersion(distribution: str) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(distribution)
        except PackageNotFoundError:
            return None

    def process(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        outputVolume: vtkMRMLScalarVolumeNode,
        progress=None,
        uncertaintyVolume: vtkMRMLScalarVolumeNode | None = None,
        **settings,
    ) -> None:
        """Denoise in this process (blocks Slicer until done): node -> numpy -> dd_medical -> node.

        ``settings``: ``strength``, ``modality`` ("auto": the series' DICOM modality when CT or MR, else decided
        from the values), ``iterations``, ``channels``, ``blocks``, ``ensemble``, ``slab`` (0: the strength
        preset's value), ``fp32``, ``compile``, ``device``, ``seed`` (``DeepDecoderLib.logic.DEFAULT_SETTINGS``).
        ``progress(fraction)`` is called with values rising in [0, 1]. The output gets the input's geometry,
        parent transform and window/level. ``uncertaintyVolume`` (optional) receives the uncertainty map, the
        calibrated per-voxel standard deviation (HU for CT, stored values for MR), with the input's geometry, shown
        as a colour overlay over the output (:meth:`showUncertainty`); it needs an ensemble of 2 or more
        (``ValueError`` before any fitting otherwise).
        """
        from dd_medical.api import denoise

        self._checkNodes(inputVolume, outputVolume, uncertaintyVolume)
        settings = self._resolvedSettings(inputVolume, settings)
        if uncertaintyVolume:
            check_uncertainty(settings)
        preset, arguments = denoise_arguments(settings)
        array = slicer.util.arrayFromVolume(inputVolume)  # (slices, rows, columns) = KJI
        result = denoise(array, preset, progress=progress or False, uncertainty=bool(uncertaintyVolume), **arguments)
        denoised, sd = result if uncertaintyVolume else (result, None)
        ijkToRas = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(ijkToRas)
        outputVolume.SetIJKToRASMatrix(ijkToRas)
        slicer.util.updateVolumeFromArray(outputVolume, denoised)
        if uncertaintyVolume:
            uncertaintyVolume.SetIJKToRASMatrix(ijkToRas)
            slicer.util.updateVolumeFromArray(uncertaintyVolume, sd)
        self.finishOutput(inputVolume, outputVolume, uncertaintyVolume)

    def processInBackground(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        outputVolume: vtkMRMLScalarVolumeNode,
        wait: bool = False,
        uncertaintyVolume: vtkMRMLScalarVolumeNode | None = None,
        **settings,
    ):
        """Start the DeepDecoderDenoise CLI module (a separate process) and return its CLI node at once.

        ``settings`` and ``uncertaintyVolume`` as for :meth:`process`. Follow the run with the node's
        ``StatusModifiedEvent`` and ``GetProgress()`` (0-100); ``Cancel()`` stops it. When it completes, the output
        is placed under the input's parent transform and shown with the input's window/level, and the uncertainty
        map as a colour overlay (:meth:`finishOutput`), with or without the widget. ``wait=True`` blocks until it
        ends (for tests).
        """
        self._checkNodes(inputVolume, outputVolume, uncertaintyVolume)
        settings = self._resolvedSettings(inputVolume, settings)
        if uncertaintyVolume:
            check_uncertainty(settings)
        parameters = cli_parameters(inputVolume.GetID(), outputVolume.GetID(), settings,
                                    uncertaintyVolume.GetID() if uncertaintyVolume else None)
        keep_parent_transform(inputVolume, outputVolume)  # shown in place while the run goes on
        if uncertaintyVolume:
            keep_parent_transform(inputVolume, uncertaintyVolume)
        cliNode = slicer.cli.run(slicer.modules.deepdecoderdenoise, None, parameters, wait_for_completion=wait,
                                 update_display=False)
        if wait:
            if cliNode.GetStatusString() == "Completed":
                self.finishOutput(inputVolume, outputVolume, uncertaintyVolume)
            return cliNode

        def onStatusModified(caller, event):
            if caller.IsBusy():
                return
            caller.RemoveObserver(observer)
            if caller.GetStatusString() == "Completed":
                self.finishOutput(inputVolume, outputVolume, uncertaintyVolume)

        observer = cliNode.AddObserver(slicer.vtkMRMLCommandLineModuleNode.StatusModifiedEvent, onStatusModified)
        return cliNode

    def finishOutput(self, inputVolume, outputVolume, uncertaintyVolume=None) -> None:
        """The output under the input's parent transform, shown with the input's window/level, presets, colour
        table and interpolation (``DeepDecoderLib.logic``); the uncertainty map, when given, under the same
        transform and shown over the output as a colour overlay (:meth:`showUncertainty`)."""
        keep_parent_transform(inputVolume, outputVolume)
        outputVolume.CreateDefaultDisplayNodes()
        copy_display(inputVolume.GetDisplayNode(), outputVolume.GetDisplayNode())
        if uncertaintyVolume:
            keep_parent_transform(inputVolume, uncertaintyVolume)
            self.showUncertainty(outputVolume, uncertaintyVolume)

    @staticmethod
    def showUncertainty(outputVolume, uncertaintyVolume) -> None:
        """Show the uncertainty map over the denoised volume in the slice views: the output as the background
        layer, the map as the foreground layer at ``UNCERTAINTY_OPACITY``, in the Inferno colour table (Rainbow
        when this Slicer has no Inferno), windowed from 0 SD to a high percentile of the map."""
        uncertaintyVolume.CreateDefaultDisplayNodes()
        color = UNCERTAINTY_COLOR_NODE_ID
        if slicer.mrmlScene.GetNodeByID(color) is None:
            color = UNCERTAINTY_FALLBACK_COLOR_NODE_ID
        show_uncertainty_display(uncertaintyVolume.GetDisplayNode(), color,
                                 slicer.util.arrayFromVolume(uncertaintyVolume))
        slicer.util.setSliceViewerLayers(background=outputVolume, foreground=uncertaintyVolume,
                                         foregroundOpacity=UNCERTAINTY_OPACITY)

    def _resolvedSettings(self, inputVolume, settings) -> dict:
        settings = run_settings(**settings)
        settings["modality"] = resolve_modality(str(settings["modality"]), self.dicomModality(inputVolume))
        return settings

    @staticmethod
    def _checkNodes(inputVolume, outputVolume, uncertaintyVolume=None) -> None:
        if not inputVolume or inputVolume.GetImageData() is None:
            raise ValueError(_("Input volume is missing or empty"))
        if not outputVolume:
            raise ValueError(_("Output volume is missing"))
        if inputVolume.GetID() == outputVolume.GetID():
            raise ValueError(_("Choose an output volume other than the input (inputs are never modified)"))
        if uncertaintyVolume and uncertaintyVolume.GetID() in (inputVolume.GetID(), outputVolume.GetID()):
            raise ValueError(_("Choose an uncertainty volume other than the input and the output volumes"))
        if inputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(_("Input is a label map; choose a CT or MR volume"))


#
# DeepDecoderTest
#


class DeepDecoderTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test, or ctest): both paths on a small synthetic noisy volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DeepDecoder_inProcess()
        self.setUp()
        self.test_DeepDecoder_background()
        self.setUp()
        self.test_DeepDecoder_uncertainty()

    def _noisyVolume(self):
        import numpy as np

        size = 48
        yy, xx = np.mgrid[0:size, 0:size] - size / 2
        body = (xx / (0.45 * size)) ** 2 + (yy / (0.35 * size)) ** 2 < 1
        clean = np.repeat(np.where(body, 40.0, -1000.0)[None], 2, axis=0)
        noisy = clean + np.random.default_rng(0).normal(0, 100, clean.shape)
        volume = slicer.util.addVolumeFromArray(noisy.astype(np.float32), name="DeepDecoderTestInput")
        volume.SetSpacing(0.7, 0.8, 2.5)
        volume.SetOrigin(10.0, -20.0, 30.0)
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "DeepDecoderTestShift")
        shift = vtk.vtkMatrix4x4()
        shift.SetElement(0, 3, 25.0)
        transform.SetMatrixTransformToParent(shift)
        volume.SetAndObserveTransformNodeID(transform.GetID())
        volume.CreateDefaultDisplayNodes()
        volume.GetDisplayNode().SetAutoWindowLevel(0)
        volume.GetDisplayNode().SetWindowLevel(400.0, 40.0)
        return volume, clean

    def _check(self, inputVolume, outputVolume, clean):
        import numpy as np

        out = slicer.util.arrayFromVolume(outputVolume)
        noisy = slicer.util.arrayFromVolume(inputVolume)
        self.assertEqual(out.shape, noisy.shape)
        self.assertEqual(outputVolume.GetSpacing(), inputVolume.GetSpacing())
        self.assertEqual(outputVolume.GetOrigin(), inputVolume.GetOrigin())
        self.assertEqual(outputVolume.GetTransformNodeID(), inputVolume.GetTransformNodeID())
        display = outputVolume.GetDisplayNode()
        self.assertEqual((display.GetAutoWindowLevel(), display.GetWindow(), display.GetLevel()), (0, 400.0, 40.0))
        self.assertLess(np.abs(out - clean).mean(), np.abs(noisy - clean).mean())

    def test_DeepDecoder_inProcess(self):
        self.delayDisplay("Denoising in the Slicer process")
        DeepDecoderLogic.setupPythonRequirements(askConfirmation=False)
        inputVolume, clean = self._noisyVolume()
        outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        seen = []
        DeepDecoderLogic().process(inputVolume, outputVolume, iterations=300, channels=24, blocks=4, ensemble=1,
                                   device="cpu", progress=seen.append)
        self.assertEqual(seen, sorted(seen))
        self.assertAlmostEqual(seen[-1], 1.0)
        self._check(inputVolume, outputVolume, clean)
        self.delayDisplay("Test passed")

    def test_DeepDecoder_background(self):
        self.delayDisplay("Denoising through the DeepDecoderDenoise CLI module")
        inputVolume, clean = self._noisyVolume()
        outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        cliNode = DeepDecoderLogic().processInBackground(
            inputVolume, outputVolume, iterations=300, channels=24, blocks=4, ensemble=1, device="cpu", wait=True
        )
        self.assertEqual(cliNode.GetStatusString(), "Completed", cliNode.GetErrorText())
        self._check(inputVolume, outputVolume, clean)
        self.delayDisplay("Test passed")

    def test_DeepDecoder_uncertainty(self):
        self.delayDisplay("Denoising with an uncertainty map, shown as a colour overlay")
        import numpy as np

        inputVolume, _clean = self._noisyVolume()
        outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        sdVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        with self.assertRaises(ValueError):  # the map needs an ensemble of 2 or more
            DeepDecoderLogic().process(inputVolume, outputVolume, uncertaintyVolume=sdVolume, ensemble=1)
        DeepDecoderLogic().process(inputVolume, outputVolume, uncertaintyVolume=sdVolume, iterations=60, channels=16,
                                   blocks=4, ensemble=2, device="cpu")
        sd = slicer.util.arrayFromVolume(sdVolume)
        self.assertEqual(sd.shape, slicer.util.arrayFromVolume(inputVolume).shape)
        self.assertTrue(np.isfinite(sd).all() and (sd >= 0).all())
        self.assertEqual(sdVolume.GetSpacing(), inputVolume.GetSpacing())
        self.assertEqual(sdVolume.GetOrigin(), inputVolume.GetOrigin())
        self.assertEqual(sdVolume.GetTransformNodeID(), inputVolume.GetTransformNodeID())
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            self.assertEqual(composite.GetBackgroundVolumeID(), outputVolume.GetID())
            self.assertEqual(composite.GetForegroundVolumeID(), sdVolume.GetID())
            self.assertGreater(composite.GetForegroundOpacity(), 0.0)
        self.delayDisplay("Test passed")
